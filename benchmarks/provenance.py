"""Where a benchmark's numbers come from: the commit, and whether the tree differed from it."""

from __future__ import annotations

import subprocess
from typing import Any

__all__ = ["git", "git_commit", "source"]


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
