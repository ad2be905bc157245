"""The share group's tuples from its provider: dealt ahead, counted by a trace, held masks.

:class:`TupleStock` is the part of :class:`~.coordinator.ShareGroup` that asks
the provider for correlated randomness: tuples of a kind and shape
(:meth:`~TupleStock.prefetch`), every tuple a computation will take
(:meth:`~TupleStock.prefetch_for`, which traces it on the handles' shapes),
and the one-time mask of a tensor a party holds (``held_steps``). Operations
(``operations``) take tuples from the stock, and deal one when it is empty.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from mpc.errors import MPCError
from mpc.protocols.remote_shares.dealt_steps import DEAL
from mpc.protocols.remote_shares.held_steps import DEAL_FIXED, DEAL_HELD, FIX, FIXED
from mpc.protocols.remote_shares.tensor import RemoteShared
from mpc.protocols.remote_shares.vault import MAX_DEAL, dealt_shapes
from workers.base import Worker

__all__ = ["TupleStock", "tuple_key"]

T = TypeVar("T")


class TupleStock:
    """Dealt tuples of a share group, by kind and shapes (see the module docstring)."""

    parties: tuple[Worker, ...]
    provider: Worker
    session: str
    dealt: int  # tuples the provider has dealt to this group
    _keys: dict[str, torch.Tensor]
    _stock: dict[str, deque[dict[str, Any]]]
    _fixed: set[str]  # held tensors whose mask f = W − b is open
    # While prefetch_for traces a computation: tuples counted and how to deal them.
    _planning: tuple[dict[str, int], dict[str, Callable[[int], None]]] | None = None

    def _check_open(self) -> None:
        raise NotImplementedError

    def _call(self, worker: Worker, fn: Callable[[Worker], T]) -> T:
        raise NotImplementedError

    def _each(self, workers: Sequence[Worker], fn: Callable[[Worker], T]) -> list[T]:
        raise NotImplementedError

    def prefetch(
        self, kind: str, shapes: Sequence[Sequence[int]], count: int, **kwargs: int
    ) -> None:
        """Have the provider deal ``count`` tuples of ``kind`` for operands of
        ``shapes`` ahead of use (the offline phase); operations take them before
        asking for fresh ones."""
        self._check_open()
        parts = dealt_shapes(kind, [tuple(s) for s in shapes], kwargs)
        key = tuple_key(kind, shapes, kwargs)
        self._deal(key, parts, count, DEAL, kind=kind, shapes=[list(s) for s in shapes], **kwargs)

    def _deal(
        self, key: str, parts: Sequence[Sequence[int]], count: int, step: str, **args: Any
    ) -> None:
        """``count`` tuples from the provider's ``step`` into the stock under ``key``, in
        requests whose replies stay within a few tens of MB."""
        keys = [self._keys[w.id] for w in self.parties]
        per_request = _tuples_per_request(parts)
        while count > 0:
            batch = min(count, per_request)
            reply = self._call(
                self.provider,
                lambda p, n=batch: p.party_op(  # type: ignore[misc]
                    step, session=self.session, count=n, public_keys=keys, **args
                ),
            )
            tuples = reply["tuples"]
            if not isinstance(tuples, list) or len(tuples) != batch:
                raise MPCError(f"the provider {self.provider.id!r} dealt a malformed batch")
            self._stock[key].extend(tuples)
            self.dealt += batch
            count -= batch

    def _tuple(
        self, kind: str, shapes: Sequence[Sequence[int]], kwargs: dict[str, int]
    ) -> dict[str, Any]:
        key = tuple_key(kind, shapes, kwargs)
        if self._planning is not None:
            return self._plan(key, lambda n: self.prefetch(kind, shapes, n, **kwargs))
        if not self._stock[key]:
            self.prefetch(kind, shapes, 1, **kwargs)
        return self._stock[key].popleft()

    def _plan(self, key: str, deal: Callable[[int], None]) -> dict[str, Any]:
        """Count one tuple of ``key`` for the computation being planned."""
        assert self._planning is not None
        counts, dealers = self._planning
        counts[key] = counts.get(key, 0) + 1
        dealers[key] = deal
        return {"serial": -1, "sealed": []}

    def prefetch_for(self, computation: Callable[[], object], times: int = 1) -> int:
        """Have the provider deal every tuple ``computation`` (a function of this
        group's tensors) will take, ``times`` over, before it runs: it is traced
        once on the handles' shapes, asking no party anything, and must not open
        a value. Returns how many tuples were dealt."""
        self._check_open()
        if self._planning is not None:
            raise MPCError("prefetch_for does not nest")
        self._planning = ({}, {})
        try:
            computation()
        finally:
            counts, dealers = self._planning
            self._planning = None
        before = self.dealt
        for key, count in counts.items():
            missing = count * times - len(self._stock[key])
            if missing > 0:
                dealers[key](missing)
        return self.dealt - before

    def _fix(self, w: RemoteShared) -> None:
        """Once per held tensor: the provider masks it, its holder opens f = W − b, and
        the other parties keep f (``held_steps``)."""
        if w.id in self._fixed:
            return
        assert w.holder is not None
        holder = self.parties[w.holder]
        reply = self._call(
            self.provider,
            lambda p: p.party_op(
                DEAL_FIXED, session=self.session, id=w.id, shape=list(w.shape),
                holder=holder.id, holder_key=self._keys[holder.id],
            ),
        )  # fmt: skip
        opened = self._call(
            holder,
            lambda h: h.party_op(
                FIX, session=self.session, id=w.id, sealed=reply["sealed"],
                provider_key=self._keys[self.provider.id],
            ),
        )["f"]  # fmt: skip
        self._each(
            [p for p in self.parties if p is not holder],
            lambda p: p.party_op(FIXED, session=self.session, id=w.id, f=opened),
        )
        self._fixed.add(w.id)

    def prefetch_held(
        self, kind: str, x_shape: Sequence[int], w: RemoteShared, count: int, **kwargs: int
    ) -> None:
        """Have the provider deal ``count`` tuples for products ``kind(x, w)`` by the held
        tensor ``w`` ahead of use (the offline phase)."""
        self._check_open()
        if w.holder is None:
            raise MPCError(f"{w!r} is not held by one party")
        self._fix(w)
        shapes = [list(x_shape), list(w.shape)]
        self._deal(
            tuple_key(f"held:{w.id}:{kind}", shapes, kwargs),
            dealt_shapes(kind, [tuple(s) for s in shapes], kwargs), count, DEAL_HELD,
            kind=kind, shapes=shapes, w=w.id, holder=self.parties[w.holder].id, **kwargs,
        )  # fmt: skip


_DEAL_BYTES = 64 << 20  # explicit tuple parts per deal request and reply


def _tuples_per_request(parts: Sequence[Sequence[int]]) -> int:
    """How many tuples one deal request asks for: each carries one explicit part (the
    last) for one party, so a reply stays within a few tens of MB."""
    size = 8 * math.prod(parts[-1])
    return max(1, min(MAX_DEAL, _DEAL_BYTES // max(size, 1)))


def tuple_key(kind: str, shapes: Sequence[Sequence[int]], kwargs: dict[str, int]) -> str:
    return f"{kind}|{[list(s) for s in shapes]}|{sorted(kwargs.items())}"
