"""``fedsim new NAME``: a small project — a task, a config file, a test — that runs as written.

The files are templates in ``fedsim/templates/`` (shipped with the package),
filled with the project's name. The task trains on scikit-learn's digits, which
need no download, so ``fedsim run --config experiment.toml`` in the project's
folder works at once; the user then replaces the model and the data.
"""

from __future__ import annotations

import argparse
import re
from importlib import resources
from pathlib import Path

from fl.errors import ConfigError

__all__ = ["new_project"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
# template → the file it becomes in the project
_FILES = {
    "task.py.tmpl": "task.py",
    "experiment.toml.tmpl": "experiment.toml",
    "test_task.py.tmpl": "test_task.py",
    "README.md.tmpl": "README.md",
}


def new_project(args: argparse.Namespace) -> int:
    """Write the project ``args.name`` under ``args.dir``; nothing is overwritten."""
    name = args.name
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"new {name!r}: a name starts with a letter and holds letters, digits, "
            "'-' or '_' (at most 64)"
        )
    folder = Path(args.dir) / name
    if folder.exists():
        raise ConfigError(f"new: {str(folder)!r} exists; choose another name or --dir")
    templates = resources.files("fedsim") / "templates"
    rendered = {
        target: (templates / source).read_text(encoding="utf-8").replace("{{name}}", name)
        for source, target in _FILES.items()
    }
    try:
        folder.mkdir(parents=True)
        for target, text in rendered.items():
            (folder / target).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"new: cannot write {str(folder)!r}: {exc.strerror}") from None
    print(f"wrote {folder}/: {', '.join(rendered)}")
    print(f"next: cd {folder} && fedsim run --config experiment.toml")
    return 0
