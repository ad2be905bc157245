"""Measures how many seconds Prefect adds to a level.

Each task body is timed from the inside (``timed_body``), and each task call
from the call site (``OrchestrationMeter.call``). Prefect's share of a level is
then the flow run's wall time outside its own body plus, for every task call,
the call's wall time minus its body's time. This is measured on every run, not
estimated, so the README's "Prefect overhead" column is what the user paid.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["OrchestrationMeter", "current_meter", "timed_body"]

P = ParamSpec("P")
R = TypeVar("R")

# A module-level slot rather than a thread-local: Prefect may run a task body on
# another thread than the flow's, and levels run one after another.
_current: list[OrchestrationMeter] = []


class OrchestrationMeter:
    """Accumulates task-call and task-body seconds of one level."""

    def __init__(self) -> None:
        self.call_seconds = 0.0
        self.body_seconds = 0.0
        self.calls = 0

    def call(self, task: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Call a Prefect task and account for its wall time."""
        start = time.perf_counter()
        try:
            return task(*args, **kwargs)
        finally:
            self.call_seconds += time.perf_counter() - start
            self.calls += 1

    @property
    def task_overhead_seconds(self) -> float:
        return max(self.call_seconds - self.body_seconds, 0.0)

    def __enter__(self) -> OrchestrationMeter:
        _current.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _current.remove(self)


def current_meter() -> OrchestrationMeter | None:
    return _current[-1] if _current else None


def timed_body(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a task body so that its own seconds reach the current meter."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            meter = current_meter()
            if meter is not None:
                meter.body_seconds += time.perf_counter() - start

    return wrapper
