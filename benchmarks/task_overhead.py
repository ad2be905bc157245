"""Benchmark: does training the built-in CNN through the task interface cost anything?

Runs the same ``fedsim run`` (quick-profile settings, levels baseline, 2 and 3,
McMahan CNN) alternately from this tree and from a git worktree of the commit
before tasks existed (``--base``, default 4439d80), ``--repeats`` times each,
so that drift on a shared machine hits both alike. Each run's per-level
training seconds are read from its table; the figure is the ratio of a
level's seconds in this tree to the base's in the run next to it (paired),
reported as median and range, with every run's raw numbers in the JSON.

    .venv/bin/python benchmarks/task_overhead.py [--repeats 3] [--rounds 3]

Target (reported, not asserted): within noise of 1.00×.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from provenance import git, source
from table import write_table

ROOT = Path(__file__).resolve().parent.parent
LEVELS = ("L0 baseline", "L2 federated", "L3 decentralized")


def _run(tree: Path, args: list[str], home: Path) -> dict[str, tuple[float, float]]:
    """``fedsim run ARGS`` with ``tree``'s code: each level's (accuracy %, train s)."""
    home.mkdir(parents=True)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "PREFECT_HOME": str(home / "prefect"),
        "FEDSIM_REPORTS_DIR": str(home / "reports"),
        "COLUMNS": "120",
    }
    # `python -m` puts the working directory first on sys.path: the tree's packages
    # are imported instead of the installed (editable) ones.
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", *args],
        cwd=tree, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"fedsim run failed in {tree}: {proc.stderr.strip()[-500:]}")
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[1] in LEVELS:
            rows[cells[1]] = (float(cells[2].rstrip("%")), float(cells[3]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="4439d80", help="the commit before tasks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/task_overhead.md")
    args = parser.parse_args()
    run_args = ["--levels", "baseline,2,3", "--rounds", str(args.rounds), "--experiment", "bench"]
    load_before = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="fedsim-task-overhead-") as scratch:
        base = Path(scratch) / "base"
        git("worktree", "add", "--detach", str(base), args.base)
        runs: list[dict[str, Any]] = []
        try:
            for repeat in range(args.repeats):
                for name, tree in (("tasks", ROOT), ("base", base)):
                    home = Path(scratch) / f"{name}-{repeat}"
                    levels = _run(tree, run_args, home)
                    runs.append({"tree": name, "repeat": repeat, "levels": levels})
                    print(f"{name} #{repeat}: {levels}", flush=True)
        finally:
            git("worktree", "remove", "--force", str(base))
    ratios = {
        level: [
            runs[2 * r]["levels"][level][1] / runs[2 * r + 1]["levels"][level][1]
            for r in range(args.repeats)
        ]
        for level in LEVELS
    }
    facts = {
        "command": " ".join([sys.executable, *sys.argv]),
        "source": source(),
        "base": args.base,
        "started": started.isoformat(timespec="seconds"),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "fedsim_run": run_args,
        "runs": runs,
        "ratios": ratios,
    }
    args.out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    lines = [
        f"Built-in McMahan CNN through the task interface ({facts['source']['commit']}) "
        f"against the code before tasks ({args.base}): `fedsim run {' '.join(run_args)}` "
        f"(quick profile: 8,000 / 2,000 images, 4 workers), the two trees alternated, "
        f"{args.repeats} pairs; load {load_before[0]:.1f} before, "
        f"{facts['load_after'][0]:.1f} after. Command: `{facts['command']}`.",
        "",
        "| level | train s, tasks (median, range) | train s, before | ratio median "
        "| ratio range | accuracy (tasks / before) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for level in LEVELS:
        mine = [run["levels"][level][1] for run in runs if run["tree"] == "tasks"]
        theirs = [run["levels"][level][1] for run in runs if run["tree"] == "base"]
        accuracy = {
            tree: sorted({run["levels"][level][0] for run in runs if run["tree"] == tree})
            for tree in ("tasks", "base")
        }
        lines.append(
            f"| {level} | {statistics.median(mine):.1f} ({min(mine):.1f}–{max(mine):.1f}) "
            f"| {statistics.median(theirs):.1f} ({min(theirs):.1f}–{max(theirs):.1f}) "
            f"| {statistics.median(ratios[level]):.3f}× "
            f"| {min(ratios[level]):.3f}–{max(ratios[level]):.3f}× "
            f"| {accuracy['tasks']} / {accuracy['base']} |"
        )
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
