"""Where a benchmark's numbers come from: the commit, and whether the tree differed from it."""

from __future__ import annotations

import subprocess
from typing import Any

__all__ = ["git", "git_commit", "run_facts", "source"]


def git(*args: str) -> str:
    """``git args`` in the current folder, stripped; "unknown" where git cannot answer."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def git_commit() -> str:
    """The short hash of HEAD."""
    return git("rev-parse", "--short", "HEAD")


def source() -> dict[str, Any]:
    """The commit and whether tracked files differ from it (the tree may change mid-run)."""
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git_commit(), "dirty": status not in ("", "unknown")}


def run_facts(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """What every results file records of its run: the command, the source, when,
    the machine's cores and torch threads, and its load before and after."""
    import datetime as dt
    import os
    import shlex
    import sys

    import torch

    return {
        "command": shlex.join([".venv/bin/python", *sys.argv]),
        "source": source(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
