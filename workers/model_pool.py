"""Modules lent out for one training or evaluation at a time.

A worker needs an ``nn.Module`` only while it trains or evaluates; between
requests its state lives in its object store. Simulating a thousand clients in
one process with a module per client would hold a thousand models (and, after
``backward``, a thousand sets of gradients) for the few that train at any
moment. Virtual workers of one run therefore share one pool: a module is
borrowed for a request and returned after it, so the number of modules ever
built is the number of requests running at once — one for the coordinator's
sequential rounds — not the number of clients.

Borrowing is safe because every lease starts by making a full state the
module's own (``fl.models.adopt_state`` checks keys and shapes): the module
*adopts* tensors instead of writing into the ones it held. Nothing of one client
is used by the next, and what a module held after a lease — the trained state —
can leave without a copy (:func:`trained_state`): no later lease writes into it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from fl.models import adopt_state
from fl.tasks import model_task

__all__ = ["ModelPool", "trained_state"]


class ModelPool:
    """Built modules by model key (``fl.tasks.model_task``), each lent to one request at a
    time (thread-safe)."""

    def __init__(self) -> None:
        self._free: dict[str, list[nn.Module]] = {}
        self._lock = threading.Lock()
        self.built = 0  # modules this pool ever built: the model copies it holds
        self._built_of: dict[str, int] = {}  # the same, by model key
        self.lent = 0
        self.peak_lent = 0

    def built_of(self, name: str) -> int:
        """Modules of the model keyed ``name`` this pool ever built: a process's pool
        outlives one run, and other runs' models are not this run's copies."""
        with self._lock:
            return self._built_of.get(name, 0)

    @contextmanager
    def lease(
        self, name: str, state: Mapping[str, torch.Tensor], *, take: bool = False
    ) -> Iterator[nn.Module]:
        """A module of the model keyed ``name`` holding ``state``, for the duration of the block.

        With ``take`` the module adopts ``state``'s tensors themselves (the caller
        gives them up); otherwise copies. Raises ConfigError (from
        ``model_task``) for a key this process did not load, TaskError for a
        model factory that fails, DataError for a state that does not fit; the
        module goes back to the pool either way.
        """
        with self._lock:
            free = self._free.get(name)
            module = free.pop() if free else None
        if module is None:
            module = model_task(name).build()
            with self._lock:
                self.built += 1
                self._built_of[name] = self._built_of.get(name, 0) + 1
        with self._lock:
            self.lent += 1
            self.peak_lent = max(self.peak_lent, self.lent)
        try:
            adopt_state(module, state, take=take)
            yield module
        finally:
            # Gradients are a second copy of the model: do not keep them pooled.
            module.zero_grad(set_to_none=True)
            with self._lock:
                self.lent -= 1
                self._free.setdefault(name, []).append(module)


def trained_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state a leased module holds, detached but not copied.

    Safe to keep after the lease: the pool's next lease of this module makes
    other tensors its own (:meth:`ModelPool.lease`) and never writes into these.
    """
    return {key: value.detach() for key, value in module.state_dict().items()}
