"""The layers of docs/design.md hold: read from the source with ``ast``, not from a list.

Every import counts, wherever it sits (module level, inside a function, under
``TYPE_CHECKING``): a lazy import hides a circle from Python, not from a reader.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fl", "mpc", "workers", "flows", "fedsim")
# The libraries: they compute, and say nothing of orchestration, tracking or the network.
LIBRARIES = ("fl", "mpc")
FORBIDDEN_IN_LIBRARIES = ("prefect", "mlflow", "asyncio", "websockets")


def imports(package: str) -> Iterator[tuple[str, str, list[str]]]:
    """(file, imported module, names imported from it) for every import in ``package``."""
    for path in sorted((ROOT / package).rglob("*.py")):
        where = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(), where)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield where, alias.name, []
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield where, node.module, [alias.name for alias in node.names]


def package_graph() -> dict[str, dict[str, str]]:
    """For each package, the other packages it imports, each with one file that does."""
    graph: dict[str, dict[str, str]] = {package: {} for package in PACKAGES}
    for package in PACKAGES:
        for where, module, _names in imports(package):
            top = module.split(".")[0]
            if top in PACKAGES and top != package:
                graph[package].setdefault(top, where)
    return graph


def circles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Every cycle of ``graph``, each as the packages on it (first repeated last)."""
    found: list[list[str]] = []

    def walk(path: list[str]) -> None:
        for nxt in graph[path[-1]]:
            if nxt == path[0]:
                found.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its least name
                walk([*path, nxt])

    for start in sorted(graph):
        walk([start])
    return found


def test_no_packages_import_each_other_in_a_circle() -> None:
    graph = package_graph()

    found = circles(graph)

    described = [
        " -> ".join(f"{a} ({graph[a][b]})" for a, b in itertools.pairwise(cycle)) for cycle in found
    ]
    assert not found, "packages import each other in a circle: " + "; ".join(described)


def test_the_circle_check_sees_a_circle() -> None:
    # The check itself: a graph with a lazy back-edge is a circle.
    graph = {"mpc": {"workers": "mpc/a.py"}, "workers": {"mpc": "workers/b.py"}, "fl": {}}

    assert circles(graph) == [["mpc", "workers", "mpc"]]


def test_fl_and_mpc_import_no_prefect_asyncio_websockets_or_mlflow() -> None:
    offending = [
        f"{where} imports {module}"
        for package in LIBRARIES
        for where, module, _names in imports(package)
        if module.split(".")[0] in FORBIDDEN_IN_LIBRARIES
    ]

    assert not offending, "; ".join(offending)


def test_no_package_imports_a_private_name_of_another() -> None:
    offending = [
        f"{where} imports {module}.{name}"
        for package in PACKAGES
        for where, module, names in imports(package)
        if module.split(".")[0] in PACKAGES and module.split(".")[0] != package
        for name in names
        if name.startswith("_")
    ]

    assert not offending, "; ".join(offending)


def test_workers_know_no_protocol() -> None:
    # workers offer the party-step registry; the protocols (mpc) fill it.
    offending = [where for where, module, _ in imports("workers") if module.split(".")[0] == "mpc"]

    assert not offending, "workers import mpc in " + ", ".join(sorted(set(offending)))
