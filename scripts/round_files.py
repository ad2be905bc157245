"""Which of fedsim's source files one level-3 FedAvg round runs code from.

Runs `fedsim run --levels 3 --rounds 1` in this process with a profiler on every
thread, and lists each repository file (tests and the venv excluded) with the
functions of it that ran while `flows.round_loop.run_rounds` was on a stack:
module bodies and whatever ran under an import are left out, so the list is the
round's path, not what Python loaded. `--whole` counts the whole run instead,
from the CLI to the report.

    .venv/bin/python scripts/round_files.py [--whole] [--out benchmarks/results/round_files.md]

It uses its own Prefect home and MLflow store in a temporary folder.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUN = [
    "run", "--levels", "3", "--rounds", "1", "--workers", "2",
    "--train-samples", "600", "--test-samples", "200",
]  # fmt: skip


class RoundProfile:
    """A profiler that records which repository functions run, per file."""

    def __init__(self, whole: bool) -> None:
        self.whole = whole
        self.rounds_open = 0  # run_rounds frames now running, on any thread
        self.functions: dict[str, set[str]] = collections.defaultdict(set)
        self.prefix = str(ROOT) + os.sep

    def __call__(self, frame: types.FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if code.co_name == "run_rounds" and code.co_filename.endswith("round_loop.py"):
            self.rounds_open += {"call": 1, "return": -1}.get(event, 0)
        if event != "call" or not (self.whole or self.rounds_open):
            return
        path = code.co_filename
        if not path.startswith(self.prefix) or code.co_name == "<module>":
            return
        relative = path[len(self.prefix) :]
        if relative.startswith((".venv", "tests", "scripts")) or _under_import(frame):
            return
        self.functions[relative].add(code.co_name)


def _under_import(frame: types.FrameType) -> bool:
    """Whether a module body (an import) is running below this frame's caller."""
    caller = frame.f_back
    while caller is not None:
        if caller.f_code.co_name == "<module>" and caller.f_code.co_filename != __file__:
            return True
        caller = caller.f_back
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--whole", action="store_true", help="count the whole run")
    parser.add_argument("--out", type=Path, help="write the list as Markdown here")
    args = parser.parse_args()
    out = args.out.resolve() if args.out else None
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="fedsim-round-files-") as tmp:
        os.environ["PREFECT_HOME"] = str(Path(tmp, "prefect"))
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        os.chdir(tmp)  # the report goes here
        from fedsim import cli

        profile = RoundProfile(args.whole)
        sys.setprofile(profile)
        threading.setprofile(profile)
        try:
            code = cli.main(RUN)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
            os.chdir(here)
    if code != 0:
        print(f"round_files: the run failed (exit {code})", file=sys.stderr)
        return code
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    scope = "the whole run" if args.whole else "one round (inside run_rounds)"
    lines = [
        f"# Files one level-3 FedAvg round runs code from: {len(profile.functions)}",
        "",
        f"Scope: {scope}; commit {commit}; command: "
        f"`.venv/bin/python scripts/round_files.py{' --whole' if args.whole else ''}` "
        f"(`fedsim {' '.join(RUN)}`).",
        "",
        "| file | functions that ran |",
        "|---|---|",
    ]
    for path, names in sorted(profile.functions.items()):
        lines.append(f"| `{path}` | {', '.join(sorted(n.strip('<>') for n in names))} |")
    text = "\n".join(lines) + "\n"
    if out is not None:
        out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
