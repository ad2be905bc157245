"""The share group's tuples from its provider: dealt ahead, counted by a trace, held masks.

:class:`TupleStock` is the part of :class:`~.coordinator.ShareGroup` that asks
the provider for correlated randomness: tuples of a kind and shape
(:meth:`~TupleStock.prefetch`), every tuple a computation will take
(:meth:`~TupleStock.prefetch_for`, which traces it on the handles' shapes),
or the same dealt in a background thread while the caller computes
(:meth:`~TupleStock.deal_ahead`), and the one-time mask of a tensor a party
holds (``held_steps``). Operations (``operations``) take tuples from the
stock, first in first out, and deal one when it is empty.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from mpc.errors import MPCError
from mpc.protocols.party_groups import PartyGroup
from mpc.protocols.remote_shares.dealt_steps import DEAL
from mpc.protocols.remote_shares.held_steps import DEAL_FIXED, DEAL_HELD, FIX, FIXED
from mpc.protocols.remote_shares.tensor import RemoteShared
from mpc.protocols.remote_shares.vault import MAX_DEAL, dealt_shapes

__all__ = ["TupleStock", "tuple_key"]


class TupleStock(PartyGroup):
    """Dealt tuples of a share group, by kind and shapes (see the module docstring)."""

    dealt: int  # tuples the provider has dealt to this group
    _stock: dict[str, deque[dict[str, Any]]]
    _fixed: set[str]  # held tensors whose mask f = W − b is open
    _traced: threading.local  # .plan: see _planning
    # deal_ahead's thread (the only one that talks to the provider while it
    # deals) and its unfinished deals.
    _dealer: ThreadPoolExecutor | None = None
    _dealing: list[Future[int]]

    @property
    def _planning(self) -> _Plan | None:
        """While this thread traces a computation: the tuples counted, how to deal
        them, the held tensors they need fixed. Per thread: other threads may run
        operations of the group meanwhile."""
        plan: _Plan | None = getattr(self._traced, "plan", None)
        return plan

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
            with self._lock:
                self._stock[key].extend(tuples)
                self.dealt += batch
            count -= batch

    def _tuple(
        self, kind: str, shapes: Sequence[Sequence[int]], kwargs: dict[str, int]
    ) -> dict[str, Any]:
        key = tuple_key(kind, shapes, kwargs)
        if self._planning is not None:
            return self._plan(key, lambda n: self.prefetch(kind, shapes, n, **kwargs))
        return self._take(key, lambda: self.prefetch(kind, shapes, 1, **kwargs))

    def _take(self, key: str, deal_one: Callable[[], None]) -> dict[str, Any]:
        """The oldest tuple of ``key``; if there is none, after the deals under way
        (they may bring it), or else one dealt now."""
        with self._lock:
            stock = self._stock[key]
        if not stock:
            self._await_dealing()
            if not stock:
                deal_one()
        return stock.popleft()

    def _plan(self, key: str, deal: Callable[[int], None], fix: Any = None) -> dict[str, Any]:
        """Count one tuple of ``key`` for the computation being traced (``fix``: the
        held tensor it masks)."""
        assert self._planning is not None
        self._planning.counts[key] = self._planning.counts.get(key, 0) + 1
        self._planning.dealers[key] = deal
        if fix is not None:
            self._planning.fixes[fix.id] = fix
        return {"serial": -1, "sealed": []}

    def _trace(self, computation: Callable[[], object]) -> _Plan:
        """What ``computation`` will take, traced on the handles' shapes: no party is
        asked anything, and it must not open a value."""
        self._check_open()
        if self._planning is not None:
            raise MPCError("a traced computation cannot trace another")
        self._traced.plan = plan = _Plan()
        try:
            computation()
        finally:
            self._traced.plan = None
        return plan

    def prefetch_for(self, computation: Callable[[], object], times: int = 1) -> int:
        """Have the provider deal every tuple ``computation`` (a function of this
        group's tensors) will take, ``times`` over, before it runs: it is traced
        once on the handles' shapes, asking no party anything, and must not open
        a value. Tuples in stock count. Returns how many tuples were dealt."""
        plan = self._trace(computation)
        self._await_dealing()
        before = self.dealt
        for key, count in plan.counts.items():
            missing = count * times - len(self._stock[key])
            if missing > 0:
                plan.dealers[key](missing)
        return self.dealt - before

    def deal_ahead(self, computation: Callable[[], object], times: int = 1) -> Future[int]:
        """Trace ``computation`` now and have the provider deal its tuples in a
        background thread, while this one computes: the next batch's tuples dealt
        during this batch. They join the stock after those already in it (first
        in, first out), so deal the computations in the order they will run. An
        operation that finds its stock empty waits for these deals. Returns the
        future number of tuples dealt."""
        plan = self._trace(computation)
        for w in plan.fixes.values():  # asks the parties: on this thread, not the dealer's
            self._fix(w)
        if self._dealer is None:
            self._dealer = ThreadPoolExecutor(1, thread_name_prefix=f"{self.session}-dealer")

        def deal() -> int:
            before = self.dealt
            for key, count in plan.counts.items():
                plan.dealers[key](count * times)
            return self.dealt - before

        future = self._dealer.submit(deal)
        with self._lock:  # the caller holds the future: finished ones need no keeping
            self._dealing = [f for f in self._dealing if not f.done()] + [future]
        return future

    def _await_dealing(self) -> None:
        """Wait for every deal under way (a failed one raises here)."""
        with self._lock:
            pending, self._dealing = self._dealing, []
        for future in pending:
            future.result()

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


class _Plan:
    """A traced computation's tuples: how many of each key, how to deal them, and
    the held tensors whose masks they need."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.dealers: dict[str, Callable[[int], None]] = {}
        self.fixes: dict[str, RemoteShared] = {}


_DEAL_BYTES = 64 << 20  # explicit tuple parts per deal request and reply


def _tuples_per_request(parts: Sequence[Sequence[int]]) -> int:
    """How many tuples one deal request asks for: each carries one explicit part (the
    last) for one party, so a reply stays within a few tens of MB."""
    size = 8 * math.prod(parts[-1])
    return max(1, min(MAX_DEAL, _DEAL_BYTES // max(size, 1)))


def tuple_key(kind: str, shapes: Sequence[Sequence[int]], kwargs: dict[str, int]) -> str:
    return f"{kind}|{[list(s) for s in shapes]}|{sorted(kwargs.items())}"
