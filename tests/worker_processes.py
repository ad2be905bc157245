"""Real websocket worker processes on loopback for protocol tests.

A thin wrapper over the product's own launcher (``workers.launcher``), so tests
start, authenticate and stop worker processes exactly as level 4 does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fl.partition import Partitioning
from workers.base import Worker
from workers.launcher import LocalWorkerPool, WorkerSpec

__all__ = ["worker_processes"]


@contextmanager
def worker_processes(count: int) -> Iterator[list[Worker]]:
    """``count`` single-threaded worker processes (each with a few training samples,
    which protocol tests ignore); every process is stopped on exit."""
    partitioning = Partitioning("fashion-mnist", "iid", count, 0, 10 * count)
    spec = WorkerSpec(partitioning=partitioning, data_dir=None, threads=1)
    with LocalWorkerPool(spec, request_timeout=60) as pool:
        assert pool.fleet is not None
        yield pool.fleet.clients
