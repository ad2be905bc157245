"""Workers for a benchmark: virtual ones in this process, or worker processes on this host."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fl.partition import Partitioning
from workers.base import Worker
from workers.launcher import LocalWorkerPool, WorkerSpec
from workers.virtual import VirtualWorker

__all__ = ["workers_over"]


@contextlib.contextmanager
def workers_over(transport: str, count: int, *, threads: int = 1) -> Iterator[list[Worker]]:
    """``count`` workers: ``virtual``, or ``websocket`` processes started (each with
    ``threads`` torch threads and a few training images the benchmarks ignore) and
    stopped as level 4's are."""
    if transport == "virtual":
        yield [VirtualWorker(f"w{i}") for i in range(count)]
        return
    partitioning = Partitioning("fashion-mnist", "iid", count, 0, 10 * count)
    spec = WorkerSpec(partitioning=partitioning, data_dir=None, threads=threads)
    with LocalWorkerPool(spec, request_timeout=600) as pool:
        assert pool.fleet is not None
        yield list(pool.fleet.clients)
