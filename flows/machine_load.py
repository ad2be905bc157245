"""How busy the machine was while a level ran, and how much of that was not fedsim.

A slowdown is a ratio of wall-clock seconds, so a level measured while other
processes held the cores reads slower than it is (on a loaded 2-core machine a
2-thread baseline slowed 4–7×, and levels then showed "0.23×"). Each level
run records, as metrics: ``machine_other_cores`` — the CPU-seconds the whole
machine spent busy, minus this process's and its children's, over the
level's wall seconds: cores other processes held on average; fedsim's
worker daemons on this host (level 5's, started by ``fedsim worker up``)
count as the run's own — and
``machine_load_1m`` (the 1-minute load average at the end) and
``machine_cores``. The report flags a level whose ``machine_other_cores``
reached :data:`BUSY_CORES` (``flows.report_data``).

MLflow's own system metrics (CPU and memory utilisation, disk, network, every
10 s) are recorded for the same run by :class:`SystemMetrics`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

__all__ = ["BUSY_CORES", "LoadMeter", "SystemMetrics"]

BUSY_CORES = 0.5  # other processes held half a core or more on average: flagged


def _busy_seconds() -> float:
    """CPU-seconds the whole machine has spent not idle (over every core)."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return float(sum(times) - idle)


def _is_fedsim_worker(process: psutil.Process) -> bool:
    """A ``fedsim worker serve`` process on this host (level 5's daemons): the run's own."""
    try:
        words = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return "fedsim" in words and "worker" in words and "serve" in words


def _own_seconds() -> dict[int, float]:
    """CPU-seconds by pid of this process (with its waited-for children), its live
    descendants, and the fedsim worker daemons on this host."""
    me = psutil.Process()
    seconds: dict[int, float] = {}
    with contextlib.suppress(psutil.Error):
        t = me.cpu_times()
        seconds[me.pid] = t.user + t.system + t.children_user + t.children_system
    ours = {p.pid: p for p in me.children(recursive=True)}
    for process in psutil.process_iter():
        if process.pid not in ours and process.pid != me.pid and _is_fedsim_worker(process):
            ours[process.pid] = process
    for pid, process in ours.items():
        with contextlib.suppress(psutil.Error):  # it may have exited meanwhile
            t = process.cpu_times()
            seconds[pid] = t.user + t.system
    return seconds


@dataclass
class LoadMeter:
    """Started when a level starts; :meth:`metrics` when it ends."""

    wall: float = 0.0
    busy: float = 0.0
    own: dict[int, float] = field(default_factory=dict)

    def start(self) -> LoadMeter:
        self.wall, self.busy, self.own = time.perf_counter(), _busy_seconds(), _own_seconds()
        return self

    def metrics(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.wall, 1e-9)
        own = sum(s - self.own.get(pid, 0.0) for pid, s in _own_seconds().items())
        others = (_busy_seconds() - self.busy) - own
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
