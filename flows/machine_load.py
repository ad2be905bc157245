"""How busy the machine was while a level ran, and how much of that was not fedsim.

A slowdown is a ratio of wall-clock seconds, so a level measured while other
processes held the cores reads slower than it is (on a loaded 2-core machine a
2-thread baseline slowed 4–7×, and levels then showed "0.23×"). Each level
run records, as metrics: ``machine_other_cores`` — the CPU-seconds the whole
machine spent busy, minus this process's and its children's, over the
level's wall seconds: cores other processes held on average — and
``machine_load_1m`` (the 1-minute load average at the end) and
``machine_cores``. The report flags a level whose ``machine_other_cores``
reached :data:`BUSY_CORES` (``flows.report_data``). Independently started
workers on this host (level 5 in ``make run``) count as other processes.

MLflow's own system metrics (CPU and memory utilisation, disk, network, every
10 s) are recorded for the same run by :class:`SystemMetrics`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

import psutil

__all__ = ["BUSY_CORES", "LoadMeter", "SystemMetrics"]

BUSY_CORES = 0.5  # other processes held half a core or more on average: flagged


def _busy_seconds() -> float:
    """CPU-seconds the whole machine has spent not idle (over every core)."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return float(sum(times) - idle)


def _own_seconds() -> float:
    """CPU-seconds of this process and its live children (and its waited-for ones)."""
    me = psutil.Process()
    total = 0.0
    with contextlib.suppress(psutil.Error):
        t = me.cpu_times()
        total += t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # it may have exited meanwhile
            t = child.cpu_times()
            total += t.user + t.system
    return total


@dataclass
class LoadMeter:
    """Started when a level starts; :meth:`metrics` when it ends."""

    wall: float = 0.0
    busy: float = 0.0
    own: float = 0.0

    def start(self) -> LoadMeter:
        self.wall, self.busy, self.own = time.perf_counter(), _busy_seconds(), _own_seconds()
        return self

    def metrics(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.wall, 1e-9)
        others = (_busy_seconds() - self.busy) - (_own_seconds() - self.own)
        return {
            "machine_other_cores": max(others, 0.0) / wall,
            "machine_load_1m": os.getloadavg()[0],
            "machine_cores": float(os.cpu_count() or 1),
        }


class SystemMetrics:
    """MLflow's system metrics monitor for one run (``system/...`` metrics), if this
    MLflow has it; stopping it flushes what it sampled."""

    def __init__(self, run_id: str, tracking_uri: str) -> None:
        self._monitor: Any = None
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(run_id, tracking_uri=tracking_uri)
            self._monitor.start()
        except Exception:  # an MLflow without it: the run goes on without these metrics
            self._monitor = None

    def stop(self) -> None:
        if self._monitor is not None:
            with contextlib.suppress(Exception):
                self._monitor.finish()
            self._monitor = None
