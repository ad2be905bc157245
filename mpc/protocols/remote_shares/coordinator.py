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
audience allows it (``steps``).

Shapes are checked here, on meta tensors, before any party is asked, so bad
input costs no party any state; a step that fails on a party anyway (a worker
that disappears) leaves its half-made result to be dropped with the next
operation, and the group's other tensors usable.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import secrets
import threading
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from mpc.errors import MPCError
from mpc.protocols.remote_shares.dealt_steps import DEAL, FINISH, MASK
from mpc.protocols.remote_shares.held_steps import (
    DEAL_FIXED,
    DEAL_HELD,
    FINISH_HELD,
    FIX,
    FIXED,
    MASK_HELD,
    ZEROS,
)
from mpc.protocols.remote_shares.steps import (
    ACCEPT,
    DROP,
    JOIN,
    KEEP,
    LOCAL,
    RECEIVE,
    REVEAL,
    SPLIT,
    local_result,
)
from mpc.protocols.remote_shares.vault import BILINEAR, COORDINATOR, MAX_DEAL, dealt_shapes
from mpc.protocols.sessions import KEYGEN
from mpc.random import SecureRandom
from mpc.ring import DEFAULT_FRACTIONAL_BITS, FixedPointEncoder
from mpc.sharing import share as split_secret
from workers.base import Worker
from workers.party import FORGET
from workers.pointer import Pointer

__all__ = ["COORDINATOR", "RemoteShared", "ShareGroup", "share"]

T = TypeVar("T")
_DROP_BATCH = 64  # dropped ids sent in one request, with the next operation


class ShareGroup:
    """One session of shared tensors over ``parties`` with ``provider`` dealing.

    ``parallel`` asks every party at once (threads), as websocket workers need
    to overlap; in-process workers answer at once either way. Use as a context
    manager, or call :meth:`close`, to make every worker forget the session.
    """

    def __init__(
        self,
        parties: Sequence[Worker],
        provider: Worker,
        *,
        fractional_bits: int = DEFAULT_FRACTIONAL_BITS,
        parallel: bool = False,
    ) -> None:
        ids = [w.id for w in parties]
        if len(ids) < 2 or len(set(ids)) != len(ids):
            raise MPCError(f"a share group needs at least two distinct parties, got {ids}")
        if provider.id in ids:
            raise MPCError(f"the provider {provider.id!r} cannot also be a party")
        self.parties = tuple(parties)
        self.provider = provider
        self.encoder = FixedPointEncoder(fractional_bits)
        self.session = f"shares-{secrets.token_hex(8)}"
        self._rng = SecureRandom()
        self._keys: dict[str, torch.Tensor] = {}
        self._ids = itertools.count()
        self._stock: defaultdict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self._dropped: list[str] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(len(self.parties) + 1) if parallel else None
        self._owners: dict[str, Worker] = {}  # other workers with a session key
        self._joined = {w.id for w in (*self.parties, provider)}
        self._fixed: set[str] = set()  # held tensors whose mask f = W − b is open
        self.closed = False
        self.dealt = 0  # tuples the provider has dealt to this group
        try:
            for worker in (*self.parties, provider):
                self._keygen(worker)
            self._each(
                [*self.parties, provider],
                lambda w: w.party_op(
                    JOIN,
                    session=self.session,
                    parties=ids,
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

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Every worker forgets the session (best effort: a dead one has already)."""
        if self.closed:
            return
        self.closed = True
        for worker in self._keyed_workers():
            if not worker.closed:
                with contextlib.suppress(Exception):
                    worker.party_op(FORGET, session=self.session)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def _keyed_workers(self) -> list[Worker]:
        known = {w.id: w for w in (*self.parties, self.provider)}
        known.update(self._owners)
        return [w for w_id, w in known.items() if w_id in self._keys]

    def _keygen(self, worker: Worker) -> torch.Tensor:
        """``worker``'s session public key (it makes its pair on first use)."""
        if worker.id not in self._keys:
            if worker.id.startswith(":"):
                raise MPCError(f"worker id {worker.id!r} is reserved")
            public = worker.party_op(KEYGEN, session=self.session)["public_key"]
            if not isinstance(public, torch.Tensor) or public.dtype != torch.uint8:
                raise MPCError(f"{worker.id!r} returned no public key")
            self._keys[worker.id] = public
            if worker not in self.parties and worker is not self.provider:
                self._owners[worker.id] = worker
        return self._keys[worker.id]

    def _check_open(self) -> None:
        if self.closed:
            raise MPCError(f"share group {self.session} is closed")

    # ------------------------------------------------------------ requests

    def _each(self, workers: Sequence[Worker], fn: Callable[[Worker], T]) -> list[T]:
        """``fn`` on every worker (at once with ``parallel``); the first failure is
        raised, naming the worker, after every call has returned."""
        if self._pool is None or len(workers) < 2:
            results: list[T] = []
            for worker in workers:
                results.append(self._call(worker, fn))
            return results
        futures = [self._pool.submit(self._call, worker, fn) for worker in workers]
        return [future.result() for future in futures]

    def _call(self, worker: Worker, fn: Callable[[Worker], T]) -> T:
        try:
            return fn(worker)
        except MPCError:
            raise
        except Exception as exc:
            raise MPCError(f"party {worker.id!r} failed: {exc}") from exc

    def _on_parties(
        self, make_args: Callable[[int], dict[str, Any]], step: str
    ) -> list[dict[str, Any]]:
        """Party step ``step`` on every party, with the arguments ``make_args(index)``."""
        self._flush_drops()
        positions = {w.id: index for index, w in enumerate(self.parties)}
        return self._each(
            self.parties,
            lambda w: w.party_op(step, session=self.session, **make_args(positions[w.id])),
        )

    def _new_id(self) -> str:
        return f"t{next(self._ids)}"

    def _release(self, tensor_id: str) -> None:
        """A handle died: its shares are dropped with the next operation."""
        with self._lock:
            self._dropped.append(tensor_id)

    def _flush_drops(self, force: bool = False) -> None:
        with self._lock:
            if not self._dropped or (len(self._dropped) < _DROP_BATCH and not force):
                return
            ids, self._dropped = self._dropped, []
        for worker in self.parties:
            if not worker.closed:
                with contextlib.suppress(Exception):  # a dead party has forgotten them
                    worker.party_op(DROP, session=self.session, ids=ids)

    def _made(
        self, run: Callable[[str], Any], shape: torch.Size, holder: int | None = None
    ) -> RemoteShared:
        """Run the steps that make a new tensor; if any fails, drop what they made."""
        self._check_open()
        tensor_id = self._new_id()
        try:
            run(tensor_id)
        except Exception:
            self._release(tensor_id)
            raise
        return RemoteShared(self, tensor_id, shape, holder)

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

    # ------------------------------------------------------------ operations

    def _local(
        self,
        op: str,
        inputs: Sequence[RemoteShared],
        *,
        public: torch.Tensor | None = None,
        **args: Any,
    ) -> RemoteShared:
        publics: dict[str, Any] = dict(args)
        if public is not None:
            publics["value"] = public
        shape = _meta_shape(op, [x.shape for x in inputs], publics)
        message = {k: (list(v) if isinstance(v, tuple) else v) for k, v in args.items()}
        if public is not None:
            message["value"] = public

        def run(tensor_id: str) -> None:
            ids = [x.id for x in inputs]
            self._on_parties(
                lambda i: {"operation": op, "inputs": ids, "out": tensor_id, **message}, LOCAL
            )

        return self._made(run, shape, _held_result(op, inputs, len(self.parties)))

    def prefetch(
        self, kind: str, shapes: Sequence[Sequence[int]], count: int, **kwargs: int
    ) -> None:
        """Have the provider deal ``count`` tuples of ``kind`` for operands of
        ``shapes`` ahead of use (the offline phase); operations take them before
        asking for fresh ones."""
        self._check_open()
        parts = dealt_shapes(kind, [tuple(s) for s in shapes], kwargs)
        key = _tuple_key(kind, shapes, kwargs)
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
        key = _tuple_key(kind, shapes, kwargs)
        if not self._stock[key]:
            self.prefetch(kind, shapes, 1, **kwargs)
        return self._stock[key].popleft()

    def _product(
        self, kind: str, inputs: Sequence[RemoteShared], kwargs: dict[str, int], *, scaled: bool
    ) -> RemoteShared:
        """A Beaver product (or square), or with kind ``trunc`` a truncation, as two
        rounds on the parties: mask with the dealt tuple, then finish from the openings.

        ``scaled``: the result carries two scales and is truncated back (locally
        for two parties, with a dealt pair for more)."""
        held = inputs[1].holder if len(inputs) == 2 else None
        if kind in BILINEAR and held is not None and inputs[0].holder != held:
            return self._held_product(kind, inputs[0], inputs[1], kwargs)
        shapes = [tuple(x.shape) for x in inputs]
        parts = dealt_shapes(kind, shapes, kwargs)
        dealt = self._tuple(kind, shapes, kwargs)
        local_truncation = scaled and len(self.parties) == 2
        provider_key = self._keys[self.provider.id]
        shape_args = [list(s) for s in shapes]
        ids = [x.id for x in inputs]

        def run(tensor_id: str) -> None:
            replies = self._on_parties(
                lambda i: {
                    "kind": kind,
                    "shapes": shape_args,
                    "inputs": ids,
                    "out": tensor_id,
                    "serial": dealt["serial"],
                    "sealed": dealt["sealed"][i],
                    "provider_key": provider_key,
                    **kwargs,
                },
                MASK,
            )
            opened = [_open([r["masked"][j] for r in replies], shapes[j]) for j in range(len(ids))]
            bits = self.encoder.fractional_bits if local_truncation else 0
            self._on_parties(
                lambda i: {"out": tensor_id, "opened": opened, "truncate": bits}, FINISH
            )

        result = self._made(run, torch.Size(parts[-1]))
        if scaled and not local_truncation:
            return self._truncate(result)
        return result

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
            _tuple_key(f"held:{w.id}:{kind}", shapes, kwargs),
            dealt_shapes(kind, [tuple(s) for s in shapes], kwargs), count, DEAL_HELD,
            kind=kind, shapes=shapes, w=w.id, holder=self.parties[w.holder].id, **kwargs,
        )  # fmt: skip

    def _held_product(
        self, kind: str, x: RemoteShared, w: RemoteShared, kwargs: dict[str, int]
    ) -> RemoteShared:
        """``kind(x, w)`` by a held ``w``: the others publish their masked shares of x,
        the holder finishes with one ring operation (``held_steps``)."""
        assert w.holder is not None
        shapes = [tuple(x.shape), tuple(w.shape)]
        out_shape = dealt_shapes(kind, shapes, kwargs)[-1]
        key = _tuple_key(f"held:{w.id}:{kind}", shapes, kwargs)
        if not self._stock[key]:
            self.prefetch_held(kind, shapes[0], w, 1, **kwargs)
        dealt = self._stock[key].popleft()
        j = w.holder
        two = len(self.parties) == 2
        common = {
            "kind": kind, "shapes": [list(s) for s in shapes], "x": x.id, "w": w.id,
            "holder": self.parties[j].id, "serial": dealt["serial"],
            "provider_key": self._keys[self.provider.id],
            "truncate": self.encoder.fractional_bits if two else 0, **kwargs,
        }  # fmt: skip
        others = [p for p in self.parties if p is not self.parties[j]]

        def run(tensor_id: str) -> None:
            self._flush_drops()
            replies = self._each(
                others,
                lambda p: p.party_op(
                    MASK_HELD, session=self.session, out=tensor_id,
                    sealed=dealt["sealed"][self.parties.index(p)], **common,
                ),
            )  # fmt: skip
            opened = _open([r["masked"] for r in replies], shapes[0])
            self._call(
                self.parties[j],
                lambda h: h.party_op(
                    FINISH_HELD, session=self.session, out=tensor_id, opened=opened,
                    sealed=dealt["sealed"][j], **common,
                ),
            )  # fmt: skip

        result = self._made(run, torch.Size(out_shape))
        return result if two else self._truncate(result)

    def _lincomb(
        self, inputs: Sequence[RemoteShared], coefficients: Sequence[float], constant: float
    ) -> RemoteShared:
        """Σ c_i · x_i + constant for public coefficients, in one local step and one
        truncation (in the same step for two parties)."""
        for x in inputs[1:]:
            inputs[0]._same_group(x)
        bits = self.encoder.fractional_bits
        encoded = [int(self._public(c)) for c in coefficients]
        constant_2f = int(self._public(constant)) << bits
        two = len(self.parties) == 2
        result = self._local(
            "lincomb", list(inputs), coefficients=encoded, constant=constant_2f,
            shift=bits if two else 0,
        )  # fmt: skip
        return result if two else self._truncate(result)

    def _truncate(self, x: RemoteShared) -> RemoteShared:
        """x / 2^f: one local step for two parties, a dealt pair for more."""
        bits = self.encoder.fractional_bits
        if len(self.parties) == 2:
            return self._local("truncate", [x], bits=bits)
        return self._product("trunc", [x], {"bits": bits}, scaled=False)

    # ------------------------------------------------------------ opening

    def reveal(self, x: RemoteShared) -> torch.Tensor:
        """``x`` opened to the coordinator (float64); refused by the parties unless
        the coordinator is in its audience."""
        self._check_open()
        replies = self._on_parties(lambda i: {"id": x.id, "to": COORDINATOR}, REVEAL)
        total = _open([r["share"] for r in replies], tuple(x.shape))
        return self.encoder.decode(total)

    def reveal_to(self, x: RemoteShared, worker: Worker, obj_id: str | None = None) -> str:
        """``x`` opened to ``worker`` alone: every party seals its share for it, and
        it holds the value as ``obj_id`` (which the coordinator cannot fetch)."""
        self._check_open()
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

    def _public(self, value: torch.Tensor | float | int) -> torch.Tensor:
        return self.encoder.encode(torch.as_tensor(value, dtype=torch.float64))


class RemoteShared:
    """A fixed-point tensor secret-shared among a :class:`ShareGroup`'s parties.

    Operations return new handles; nothing is opened except by :meth:`get` and
    :meth:`reveal_to`. A handle that is garbage-collected has its shares
    dropped with a later operation of its group.
    """

    def __init__(
        self, group: ShareGroup, tensor_id: str, shape: torch.Size, holder: int | None = None
    ) -> None:
        self.group = group
        self.id = tensor_id
        self.shape = torch.Size(shape)
        # The index of the party that holds the whole value (the others hold
        # zero), or None for a tensor shared the usual way.
        self.holder = holder
        self._finalizer = weakref.finalize(self, group._release, tensor_id)

    def __repr__(self) -> str:
        names = ", ".join(w.id for w in self.group.parties)
        return f"RemoteShared({self.id}, shape={tuple(self.shape)}, parties=[{names}])"

    def _same_group(self, other: RemoteShared) -> None:
        if other.group is not self.group:
            mine = [w.id for w in self.group.parties]
            theirs = [w.id for w in other.group.parties]
            raise MPCError(
                f"cannot combine tensors of two share groups ({mine} with provider "
                f"{self.group.provider.id!r}, and {theirs} with {other.group.provider.id!r})"
            )

    # ------------------------------------------------------------ linear

    def __add__(self, other: RemoteShared | torch.Tensor | float | int) -> RemoteShared:
        if isinstance(other, RemoteShared):
            self._same_group(other)
            return self.group._local("add", [self, other])
        return self.group._local("add_public", [self], public=self.group._public(other))

    __radd__ = __add__

    def __neg__(self) -> RemoteShared:
        return self.group._local("neg", [self])

    def __sub__(self, other: RemoteShared | torch.Tensor | float | int) -> RemoteShared:
        if isinstance(other, RemoteShared):
            self._same_group(other)
            return self.group._local("sub", [self, other])
        return self.group._local("add_public", [self], public=-self.group._public(other))

    def __rsub__(self, other: torch.Tensor | float | int) -> RemoteShared:
        return (-self) + other

    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> RemoteShared:
        dims = [] if dim is None else ([dim] if isinstance(dim, int) else list(dim))
        return self.group._local("sum", [self], dims=dims, keepdim=keepdim)

    def mean(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> RemoteShared:
        if dim is None:
            count = self.shape.numel()
        else:
            dims = [dim] if isinstance(dim, int) else list(dim)
            count = math.prod(self.shape[d] for d in dims)
        return self.sum(dim, keepdim) / count

    def reshape(self, *shape: int | Sequence[int]) -> RemoteShared:
        """``reshape(2, 3)`` or ``reshape((2, 3))``; -1 infers one size."""
        first = shape[0] if len(shape) == 1 else None
        sizes = [int(s) for s in first] if isinstance(first, Sequence) else list(shape)
        try:
            meta = torch.empty(self.shape, device="meta")
            resolved = meta.reshape(sizes).shape  # type: ignore[arg-type]
        except RuntimeError as exc:
            raise MPCError(f"cannot reshape {tuple(self.shape)} to {tuple(sizes)}: {exc}") from None
        return self.group._local("reshape", [self], shape=list(resolved))

    def t(self) -> RemoteShared:
        """The transpose of a matrix (2-D)."""
        if len(self.shape) != 2:
            raise MPCError(f"t() transposes a matrix, not a tensor of shape {tuple(self.shape)}")
        return self.group._local("transpose", [self])

    def narrow(self, dim: int, start: int, length: int) -> RemoteShared:
        """``length`` entries from ``start`` along ``dim`` (as ``torch.narrow``): a minibatch."""
        if not 0 <= dim < len(self.shape) or start < 0 or start + length > self.shape[dim]:
            raise MPCError(f"narrow({dim}, {start}, {length}) is outside shape {tuple(self.shape)}")
        return self.group._local("narrow", [self], dim=dim, start=start, length=length)

    def flatten(self, start_dim: int = 0) -> RemoteShared:
        resolved = torch.empty(self.shape, device="meta").flatten(start_dim).shape
        return self.group._local("reshape", [self], shape=list(resolved))

    # ------------------------------------------------------------ products

    def __mul__(self, other: RemoteShared | torch.Tensor | float | int) -> RemoteShared:
        if isinstance(other, RemoteShared):
            self._same_group(other)
            _broadcastable_same(self.shape, other.shape, "*")
            return self.group._product("mul", [self, other], {}, scaled=True)
        if isinstance(other, int) and not isinstance(other, bool):
            # An integer multiplies each share exactly: no rescaling.
            return self.group._local("mul_public", [self], public=torch.tensor(other))
        product = self.group._local("mul_public", [self], public=self.group._public(other))
        return self.group._truncate(product)

    __rmul__ = __mul__

    def __truediv__(self, divisor: float | int) -> RemoteShared:
        """Division by a public number: multiplication by its encoded inverse."""
        if not isinstance(divisor, (int, float)) or divisor == 0:
            raise MPCError(
                f"a shared tensor is divided by a non-zero public number, not {divisor!r}"
            )
        return self * (1.0 / float(divisor))

    def __matmul__(self, other: RemoteShared | torch.Tensor) -> RemoteShared:
        if isinstance(other, RemoteShared):
            self._same_group(other)
            _meta_matmul(self.shape, other.shape)
            return self.group._product("matmul", [self, other], {}, scaled=True)
        product = self.group._local("matmul_public", [self], public=self.group._public(other))
        return self.group._truncate(product)

    def __rmatmul__(self, other: torch.Tensor) -> RemoteShared:
        product = self.group._local("rmatmul_public", [self], public=self.group._public(other))
        return self.group._truncate(product)

    def conv2d(self, weight: RemoteShared, *, stride: int = 1, padding: int = 0) -> RemoteShared:
        """2-D convolution of shared (N, C, H, W) inputs with shared weights."""
        if not isinstance(weight, RemoteShared):
            raise MPCError("conv2d takes shared weights (share them first)")
        self._same_group(weight)
        kwargs = {"stride": stride, "padding": padding}
        try:
            dealt_shapes("conv2d", [tuple(self.shape), tuple(weight.shape)], kwargs)
        except RuntimeError as exc:
            raise MPCError(
                f"conv2d of {tuple(self.shape)} by {tuple(weight.shape)}: {exc}"
            ) from None
        return self.group._product("conv2d", [self, weight], kwargs, scaled=True)

    def square(self) -> RemoteShared:
        return self.group._product("square", [self], {}, scaled=True)

    def polynomial(self, coefficients: Sequence[float]) -> RemoteShared:
        """Σ_k c_k · x^k for public coefficients (c_0, c_1, ...): one product per degree
        above one (x² by a square pair)."""
        if not coefficients:
            raise MPCError("a polynomial needs at least one coefficient")
        if len(coefficients) - 1 > 4:
            raise MPCError(f"polynomials of degree at most 4, got {len(coefficients) - 1}")
        powers: list[RemoteShared] = []
        for degree in range(1, len(coefficients)):
            powers.append(
                self if degree == 1 else (self.square() if degree == 2 else powers[-1] * self)
            )
        terms = [(p, c) for p, c in zip(powers, coefficients[1:], strict=True) if c != 0]
        if not terms:
            return self * 0 + float(coefficients[0])
        # One local step: Σ c_k x^k + c_0 at twice the scale, then one truncation.
        return self.group._lincomb([p for p, _ in terms], [c for _, c in terms], coefficients[0])

    def avg_pool2d(self, kernel: int) -> RemoteShared:
        """Non-overlapping k×k average pooling of (N, C, H, W): local sums, public division."""
        if len(self.shape) != 4 or self.shape[2] % kernel or self.shape[3] % kernel:
            raise MPCError(
                f"avg_pool2d({kernel}) needs (N, C, H, W) with H and W divisible by "
                f"{kernel}, got {tuple(self.shape)}"
            )
        area = kernel * kernel
        if len(self.group.parties) == 2 and area & (area - 1) == 0:
            # Division by a power of two: the local truncation in the same step.
            return self.group._local("pool_sum", [self], kernel=kernel, shift=area.bit_length() - 1)
        return self.group._local("pool_sum", [self], kernel=kernel) / area

    # ------------------------------------------------------------ opening

    def get(self) -> torch.Tensor:
        """The value opened to the coordinator (float64), if its audience allows."""
        return self.group.reveal(self)

    def reveal_to(self, worker: Worker, obj_id: str | None = None) -> str:
        """Open the value to ``worker`` alone; returns the id it holds it under."""
        return self.group.reveal_to(self, worker, obj_id)

    def delete(self) -> None:
        """Drop the shares now (with the group's next request)."""
        if self._finalizer.detach() is not None:
            self.group._release(self.id)


def share(
    value: torch.Tensor | Pointer,
    *,
    parties: Sequence[Worker],
    provider: Worker,
    audience: Sequence[Worker | str] | None = None,
) -> RemoteShared:
    """Share ``value`` among ``parties``, with ``provider`` dealing: the group of
    these workers is made on first use and reused (``ShareGroup.share``)."""
    key = (tuple(id(w) for w in parties), id(provider))
    group = _GROUPS.get(key)
    if group is None or group.closed:
        group = ShareGroup(parties, provider)
        _GROUPS[key] = group
    return group.share(value, audience=audience)


_GROUPS: dict[tuple[tuple[int, ...], int], ShareGroup] = {}


# Local operations after which a tensor one party held is still held by it
# (the others' zero shares stay zero); anything else spreads it.
_KEEPS_HOLDER = frozenset(
    {"add", "sub", "neg", "mul_public", "matmul_public", "rmatmul_public", "sum", "reshape",
     "pool_sum", "transpose", "narrow"}
)  # fmt: skip


def _held_result(op: str, inputs: Sequence[RemoteShared], parties: int) -> int | None:
    holders = {x.holder for x in inputs}
    if len(holders) != 1:
        return None
    (holder,) = holders
    if op in _KEEPS_HOLDER or (op == "truncate" and parties == 2):
        return holder
    if op == "add_public" and holder == 0:  # party 0 adds the public value
        return holder
    return None


_DEAL_BYTES = 64 << 20  # explicit tuple parts per deal request and reply


def _tuples_per_request(parts: Sequence[Sequence[int]]) -> int:
    """How many tuples one deal request asks for: each carries one explicit part (the
    last) for one party, so a reply stays within a few tens of MB."""
    size = 8 * math.prod(parts[-1])
    return max(1, min(MAX_DEAL, _DEAL_BYTES // max(size, 1)))


def _tuple_key(kind: str, shapes: Sequence[Sequence[int]], kwargs: dict[str, int]) -> str:
    return f"{kind}|{[list(s) for s in shapes]}|{sorted(kwargs.items())}"


def _open(parts: Sequence[Any], shape: Sequence[int]) -> torch.Tensor:
    """The sum of every party's masked value (Beaver's opening), checked."""
    total = torch.zeros(tuple(shape), dtype=torch.int64)
    for part in parts:
        if not isinstance(part, torch.Tensor) or part.dtype != torch.int64:
            raise MPCError("a party answered with something other than ring elements")
        if tuple(part.shape) != tuple(shape):
            raise MPCError(f"a party answered shape {tuple(part.shape)}, expected {tuple(shape)}")
        total += part
    return total


def _meta_shape(op: str, shapes: Sequence[torch.Size], publics: dict[str, Any]) -> torch.Size:
    """The result's shape, computed on meta tensors: an MPCError for shapes that
    do not fit, before any party is asked."""
    if op == "truncate":
        return shapes[0]
    metas = [torch.empty(tuple(s), device="meta") for s in shapes]
    values = dict(publics)
    if "value" in values:
        values["value"] = torch.empty(tuple(values["value"].shape), device="meta")
    if op == "lincomb":
        try:
            total = torch.empty(tuple(shapes[0]), device="meta")
            for shape in shapes[1:]:
                total = total + torch.empty(tuple(shape), device="meta")
            return total.shape
        except RuntimeError as exc:
            described = " and ".join(str(tuple(s)) for s in shapes)
            raise MPCError(f"a linear combination of shapes {described}: {exc}") from None
    if op == "pool_sum":
        n, c, h, w = shapes[0]
        kernel = values["kernel"]
        return torch.Size((n, c, h // kernel, w // kernel))
    try:
        return local_result(op, metas, values, 0).shape
    except RuntimeError as exc:
        described = " and ".join(str(tuple(s)) for s in shapes)
        raise MPCError(f"{op} of shapes {described}: {exc}") from None


def _meta_matmul(a: torch.Size, b: torch.Size) -> None:
    try:
        torch.empty(tuple(a), device="meta") @ torch.empty(tuple(b), device="meta")
    except RuntimeError as exc:
        raise MPCError(f"matmul of shapes {tuple(a)} and {tuple(b)}: {exc}") from None


def _broadcastable_same(a: torch.Size, b: torch.Size, op: str) -> None:
    """Shared elementwise products take operands of one shape (a triple has one)."""
    if a != b:
        raise MPCError(f"{op} of shared tensors needs equal shapes, got {tuple(a)} and {tuple(b)}")
