"""Shared tensors that live on workers: the coordinator's handles and driver.

A :class:`ShareGroup` is one session over fixed parties and a crypto provider.
:meth:`ShareGroup.share` puts a value on the parties as additive shares of its
fixed-point encoding — the coordinator's own tensor, or, through a pointer, a
value a worker holds, which that worker splits and seals for the parties
itself. The result is a :class:`RemoteShared`: a handle (an id and a shape);
its shares stay in the parties' vaults. Linear operations are one local step
on every party; products (``*``, ``@``, ``conv2d``, ``square``) are Beaver
multiplications with tuples the provider deals sealed for each party (the
coordinator relays ciphertext and sums masked values, Beaver's openings);
truncation is local for two parties and uses a dealt pair for more.
:meth:`RemoteShared.get` opens a value to the coordinator and
:meth:`RemoteShared.reveal_to` to one worker only — each if the value's
audience allows it (``vault``).

Shapes are checked here (``shapes``) before any party is asked, so bad
input costs no party any state; a step that fails on a party anyway (a worker
that disappears) leaves its half-made result to be dropped with the next
operation, and the group's other tensors usable.
"""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any

import torch

from mpc.errors import MPCError
from mpc.protocols.remote_shares.held_steps import (
    ZEROS,
)
from mpc.protocols.remote_shares.operations import GroupOperations, open_sum
from mpc.protocols.remote_shares.steps import (
    ACCEPT,
    DROP,
    JOIN,
    KEEP,
    RECEIVE,
    REVEAL,
    SPLIT,
)
from mpc.protocols.remote_shares.tensor import RemoteShared
from mpc.protocols.remote_shares.vault import COORDINATOR
from mpc.random import SecureRandom
from mpc.ring import DEFAULT_FRACTIONAL_BITS, FixedPointEncoder
from mpc.sharing import share as split_secret
from workers.base import Worker
from workers.pointer import Pointer


class ShareGroup(GroupOperations):
    """One session of shared tensors over ``parties`` with ``provider`` dealing.

    ``parallel`` asks every party at once (threads), as websocket workers need
    to overlap; in-process workers answer at once either way. Use as a context
    manager, or call :meth:`close`, to make every worker forget the session.
    """

    kind = "share group"
    drop_step = DROP

    def __init__(
        self,
        parties: Sequence[Worker],
        provider: Worker,
        *,
        fractional_bits: int = DEFAULT_FRACTIONAL_BITS,
        parallel: bool = False,
    ) -> None:
        super().__init__(parties, provider, session_prefix="shares", parallel=parallel)
        self.encoder = FixedPointEncoder(fractional_bits)
        self._rng = SecureRandom()
        self._ids = itertools.count()
        self._stock: defaultdict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self._dealing = []
        self._traced = threading.local()
        self._joined = {w.id for w in (*self.parties, provider)}
        self._fixed: set[str] = set()  # held tensors whose mask f = W − b is open
        self.dealt = 0  # tuples the provider has dealt to this group
        try:
            for worker in (*self.parties, provider):
                self._keygen(worker)
            self._each(
                [*self.parties, provider],
                lambda w: w.party_op(
                    JOIN,
                    session=self.session,
                    parties=[p.id for p in self.parties],
                    provider=provider.id,
                    fractional_bits=fractional_bits,
                ),
            )
        except Exception:
            self.close()
            raise

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> ShareGroup:
        return self

    def _before_close(self) -> None:
        if self._dealer is not None:  # the provider forgets nothing while it deals
            self._dealer.shutdown(wait=True, cancel_futures=True)

    def _not_planning(self) -> None:
        if self._planning is not None:
            raise MPCError("a computation traced by prefetch_for cannot open a value")

    def _new_id(self) -> str:
        return f"t{next(self._ids)}"

    # ------------------------------------------------------------ sharing

    def share(
        self,
        value: torch.Tensor | Pointer,
        *,
        audience: Sequence[Worker | str] | None = None,
        held: bool = False,
    ) -> RemoteShared:
        """Share ``value`` among the parties.

        A tensor is the coordinator's: encoded and split here, each share sent
        to its party; ``audience`` (default: the coordinator) says who may see
        results computed from it opened. A :class:`Pointer` names a value on a
        worker, which splits it and seals each share for its party: it never
        passes through the coordinator. Its audience defaults to that worker
        alone (and cannot be more for the worker's own data). With ``held`` a
        worker that is a party keeps the whole value as its share and the
        others zero: no split, and products by it cost one ring operation
        (``held_steps``).
        """
        self._check_open()
        if isinstance(value, Pointer):
            return self._share_remote(value, audience, held)
        if held:
            raise MPCError("only a party's own value (a pointer to it) can be held")
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise MPCError("share() takes a float tensor or a pointer to one")
        names = self._audience(audience, default=COORDINATOR)
        if COORDINATOR not in names:
            raise MPCError("the coordinator's own values are always visible to it")
        encoded = self.encoder.encode(value.detach())
        parts = split_secret(encoded, len(self.parties), self._rng)

        def run(tensor_id: str) -> None:
            self._on_parties(
                lambda i: {"id": tensor_id, "share": parts[i], "audience": names}, KEEP
            )

        return self._made(run, encoded.shape)

    def _share_remote(
        self, pointer: Pointer, audience: Sequence[Worker | str] | None, held: bool
    ) -> RemoteShared:
        owner = pointer.worker
        names = self._audience(audience, default=owner.id)
        if held:
            return self._share_held(pointer, names)
        owner_key = self._keygen(owner)
        if owner.id not in self._joined:  # an owner outside the group learns its parties
            self._call(
                owner,
                lambda w: w.party_op(
                    JOIN,
                    session=self.session,
                    parties=[p.id for p in self.parties],
                    provider=self.provider.id,
                    fractional_bits=self.encoder.fractional_bits,
                ),
            )
            self._joined.add(owner.id)
        keys = [self._keys[w.id] for w in self.parties]
        shape: list[int] = []

        def run(tensor_id: str) -> None:
            reply = self._call(
                owner,
                lambda w: w.party_op(
                    SPLIT,
                    session=self.session,
                    obj_id=pointer.id_on(owner),
                    id=tensor_id,
                    audience=names,
                    public_keys=keys,
                ),
            )
            sealed, shape[:] = reply["sealed"], reply["shape"]
            others = [i for i, w in enumerate(self.parties) if w.id != owner.id]
            self._each(
                [self.parties[i] for i in others],
                lambda w: w.party_op(
                    ACCEPT,
                    session=self.session,
                    id=tensor_id,
                    owner=owner.id,
                    owner_key=owner_key,
                    audience=names,
                    shape=list(shape),
                    sealed=sealed[self.parties.index(w)],
                ),
            )

        result = self._made(run, torch.Size())
        result.shape = torch.Size(shape)
        return result

    def _share_held(self, pointer: Pointer, names: list[str]) -> RemoteShared:
        owner = pointer.worker
        if owner not in self.parties:
            raise MPCError(f"only a party can hold a shared value; {owner.id!r} is not one")
        holder = self.parties.index(owner)
        shape: list[int] = []

        def run(tensor_id: str) -> None:
            reply = self._call(
                owner,
                lambda w: w.party_op(
                    SPLIT, session=self.session, obj_id=pointer.id_on(owner), id=tensor_id,
                    audience=names, held=True,
                ),
            )  # fmt: skip
            shape[:] = reply["shape"]
            self._each(
                [w for w in self.parties if w is not owner],
                lambda w: w.party_op(
                    ZEROS, session=self.session, id=tensor_id, shape=list(shape), audience=names
                ),
            )

        result = self._made(run, torch.Size(), holder)
        result.shape = torch.Size(shape)
        return result

    def _audience(self, audience: Sequence[Worker | str] | None, *, default: str) -> list[str]:
        if audience is None:
            return [default]
        names = sorted({a if isinstance(a, str) else a.id for a in audience})
        return names

    # ------------------------------------------------------------ opening

    def reveal(self, x: RemoteShared) -> torch.Tensor:
        """``x`` opened to the coordinator (float64); refused by the parties unless
        the coordinator is in its audience."""
        self._check_open()
        self._not_planning()
        replies = self._on_parties(lambda i: {"id": x.id, "to": COORDINATOR}, REVEAL)
        total = open_sum([r["share"] for r in replies], tuple(x.shape))
        return self.encoder.decode(total)

    def reveal_to(self, x: RemoteShared, worker: Worker, obj_id: str | None = None) -> str:
        """``x`` opened to ``worker`` alone: every party seals its share for it, and
        it holds the value as ``obj_id`` (which the coordinator cannot fetch)."""
        self._check_open()
        self._not_planning()
        key = self._keygen(worker)
        replies = self._on_parties(lambda i: {"id": x.id, "to": worker.id, "to_key": key}, REVEAL)
        obj_id = obj_id or f"revealed/{self.session}/{x.id}"
        self._call(
            worker,
            lambda w: w.party_op(
                RECEIVE,
                session=self.session,
                id=x.id,
                parties=[p.id for p in self.parties],
                public_keys=[self._keys[p.id] for p in self.parties],
                sealed=[r["sealed"] for r in replies],
                shape=list(x.shape),
                fractional_bits=self.encoder.fractional_bits,
                obj_id=obj_id,
            ),
        )
        return obj_id


def share(
    value: torch.Tensor | Pointer,
    *,
    parties: Sequence[Worker],
    provider: Worker,
    audience: Sequence[Worker | str] | None = None,
) -> RemoteShared:
    """Share ``value`` among ``parties``, with ``provider`` dealing: the group of
    these workers is made on first use and reused until it is closed
    (``ShareGroup.share``; ``x.group.close()`` makes the workers forget it)."""
    for stale in [k for k, g in _GROUPS.items() if g.closed]:
        del _GROUPS[stale]  # closed groups hold their workers no longer
    key = (tuple(id(w) for w in parties), id(provider))
    group = _GROUPS.get(key)
    if group is None:
        group = ShareGroup(parties, provider)
        _GROUPS[key] = group
    return group.share(value, audience=audience)


_GROUPS: dict[tuple[tuple[int, ...], int], ShareGroup] = {}
