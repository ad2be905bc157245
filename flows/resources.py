"""What a run holds: resident memory of this process and the processes it started."""

from __future__ import annotations

import psutil

__all__ = ["tree_rss_bytes"]


def tree_rss_bytes(pid: int | None = None) -> int:
    """Resident set size of process ``pid`` (default: this one) plus all its descendants.

    Worker processes, Dask workers and Prefect's temporary API server are part of
    what a run costs, so memory is reported for the whole tree. Pages shared
    between processes (libraries) count once per process, as ``ps`` shows them.
    """
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:  # exited while we looked
            continue
    return total
