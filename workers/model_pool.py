"""Modules lent out for one training or evaluation at a time.

A worker needs an ``nn.Module`` only while it trains or evaluates; between
requests its state lives in its object store. Simulating a thousand clients in
one process with a module per client would hold a thousand models (and, after
``backward``, a thousand sets of gradients) for the few that train at any
moment. Virtual workers of one run therefore share one pool: a module is
borrowed for a request and returned after it, so the number of modules ever
built is the number of requests running at once — one for the coordinator's
sequential rounds — not the number of clients.

Borrowing is safe because every request loads the full state it starts from
into the module (``set_state`` checks keys and shapes) and the trained state
leaves as a copy; nothing of one client stays in a module for the next but the
allocation itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from fl.models import build_model

__all__ = ["ModelPool"]


class ModelPool:
    """Built modules by model name, each lent to one request at a time (thread-safe)."""

    def __init__(self) -> None:
        self._free: dict[str, list[nn.Module]] = {}
        self._lock = threading.Lock()
        self.built = 0  # modules this pool ever built: the model copies it holds
        self.lent = 0
        self.peak_lent = 0

    @contextmanager
    def lease(self, name: str) -> Iterator[nn.Module]:
        """A module of architecture ``name`` for the duration of the block.

        Raises ConfigError (from ``build_model``) for an unknown name.
        """
        with self._lock:
            free = self._free.get(name)
            module = free.pop() if free else None
        if module is None:
            module = build_model(name)
            with self._lock:
                self.built += 1
        with self._lock:
            self.lent += 1
            self.peak_lent = max(self.peak_lent, self.lent)
        try:
            yield module
        finally:
            # Gradients are a second copy of the model: do not keep them pooled.
            module.zero_grad(set_to_none=True)
            with self._lock:
                self.lent -= 1
                self._free.setdefault(name, []).append(module)
