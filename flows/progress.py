"""Progress events from the flows to whoever displays them.

The flows must not print (they also run headless under a Prefect worker), and
Prefect flow parameters must stay JSON, so a display is not passed in as a
parameter: the CLI installs a sink for the duration of a run instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

__all__ = [
    "ProgressSink",
    "emit_level_finished",
    "emit_level_started",
    "emit_link",
    "emit_round",
    "emit_warning",
    "use_sink",
]


class ProgressSink:
    """No-op sink; subclasses override what they display."""

    def level_started(self, level: str, rounds: int) -> None:
        """A level begins; ``rounds`` rounds will follow."""

    def round_finished(self, level: str, round_index: int, metrics: Mapping[str, float]) -> None:
        """Round ``round_index`` (1-based) of ``level`` is done."""

    def level_finished(self, level: str, summary: Mapping[str, float]) -> None:
        """A level is done; ``summary`` holds its final metrics."""

    def warning(self, message: str) -> None:
        """Something the user should see (a dropped worker); also logged."""

    def link(self, what: str, url: str) -> None:
        """Where to watch the run (the Prefect UI's page of its flow run)."""


_sink: ProgressSink = ProgressSink()
logger = logging.getLogger("fedsim.progress")


@contextmanager
def use_sink(sink: ProgressSink) -> Iterator[ProgressSink]:
    """Route progress events to ``sink`` inside the ``with`` block."""
    global _sink
    previous, _sink = _sink, sink
    try:
        yield sink
    finally:
        _sink = previous


def emit_level_started(level: str, rounds: int) -> None:
    _sink.level_started(level, rounds)


def emit_round(level: str, round_index: int, metrics: Mapping[str, float]) -> None:
    _sink.round_finished(level, round_index, metrics)


def emit_level_finished(level: str, summary: Mapping[str, float]) -> None:
    _sink.level_finished(level, summary)


def emit_warning(message: str) -> None:
    logger.warning(message)
    _sink.warning(message)


def emit_link(what: str, url: str) -> None:
    _sink.link(what, url)
