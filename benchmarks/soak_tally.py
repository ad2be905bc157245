"""The soak's counters of hostile frames and of how the worker answered them.

Filled by the hostile peers (soak_peers.py; in a child process by default, whose
tally crosses back as the plain dict of ``as_dict``) and by the coordinator's
bursts (soak_coordinator.py); merged and reported by soak.py.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Tally:
    """Counters shared by threads; plain dicts of ints inside, so it pickles."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames: Counter[str] = Counter()  # per "phase: kind"
        self.answers: Counter[str] = Counter()  # per "phase: kind -> answer"
        self.hangs: Counter[str] = Counter()  # operations that hit their timeout
        self.notes: Counter[str] = Counter()  # anything worth a look, by message
        self.slowest: dict[str, float] = {}  # seconds of the slowest operation, per "phase: kind"

    def add(self, phase: str, kind: str, frames: int, answer: str, seconds: float = 0.0) -> None:
        with self._lock:
            where = f"{phase}: {kind}"
            self.slowest[where] = max(self.slowest.get(where, 0.0), seconds)
            self.frames[where] += frames
            self.answers[f"{phase}: {kind} -> {answer}"] += 1
            if "timeout" in answer:
                self.hangs[f"{phase}: {kind} -> {answer}"] += 1

    def hang(self, text: str) -> None:
        with self._lock:
            self.hangs[text[:300]] += 1

    def note(self, text: str) -> None:
        with self._lock:
            self.notes[text[:300]] += 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "frames": dict(self.frames),
                "answers": dict(self.answers),
                "hangs": dict(self.hangs),
                "notes": dict(self.notes),
                "slowest": dict(self.slowest),
            }

    def merge(self, other: dict[str, Any]) -> None:
        with self._lock:
            self.frames.update(other["frames"])
            self.answers.update(other["answers"])
            self.hangs.update(other["hangs"])
            self.notes.update(other["notes"])
            for where, seconds in other["slowest"].items():
                self.slowest[where] = max(self.slowest.get(where, 0.0), seconds)
