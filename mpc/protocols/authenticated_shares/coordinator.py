"""Shared tensors with SPDZ MACs on workers: the coordinator's driver.

An :class:`AuthenticatedGroup` is a share group whose tensors are authenticated
(Damgård, Pastro, Smart, Zakarias, CRYPTO 2012): a party that alters its share
of a value, or of a product's masked inputs, is caught when the value is
opened, except with probability about 2^-60. :meth:`AuthenticatedGroup.share`
inputs a value — the coordinator's own, or a worker's through a pointer,
which that worker masks itself — by SPDZ's input protocol; products use Beaver
tuples whose every part carries a MAC; :meth:`AuthenticatedShared.get` opens a
value and returns it only after the batched MAC check over every opening since
the last check has passed (DKLPSS13's MACCheck, with the coordinator as the
verifier: it draws the check's coefficients after the openings, and no party
sees another's answer).

What it is not, yet: the arithmetic is over F_p, p = 2^61 − 1, in fixed point
that is never truncated — a product's fractional bits are the sum of its
operands', up to :data:`MAX_SCALE` — so a computation has a product depth of
two or three; there is no convolution, pooling or reveal to a worker; and the
values are the coordinator's to open (a worker's own data cannot be an input).
``mpc.protocols.remote_shares`` has all of those, without integrity.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mpc.errors import MPCError
from mpc.field import P, field_add, field_decode_int, field_encode, field_sub
from mpc.protocols.authenticated_shares.dealer_steps import DEAL, DEAL_INPUT, KEY, SETUP
from mpc.protocols.authenticated_shares.steps import (
    CHECK,
    DROP,
    FINISH,
    INPUT,
    LOCAL,
    MASK,
    MASK_INPUT,
    OPEN,
)
from mpc.protocols.authenticated_shares.tensor import MAX_SCALE, AuthenticatedShared
from mpc.protocols.party_groups import PartyGroup
from mpc.protocols.remote_shares.shapes import bilinear_shape, local_shape
from mpc.protocols.remote_shares.steps import JOIN
from mpc.protocols.remote_shares.vault import COORDINATOR, MAX_ELEMENTS
from workers.base import Worker
from workers.pointer import Pointer

__all__ = ["AUTO_CHECK_ELEMENTS", "AuthenticatedGroup"]

AUTO_CHECK_ELEMENTS = 1 << 25  # opened elements after which a product checks first


class AuthenticatedGroup(PartyGroup):
    """One session of authenticated shared tensors over ``parties``, ``provider`` dealing.

    ``fractional_bits`` is every input's fixed-point precision; products add their
    operands' (see the module docstring). Use as a context manager, or call
    :meth:`close`, to make every worker forget the session.
    """

    kind = "authenticated group"
    drop_step = DROP

    def __init__(
        self,
        parties: Sequence[Worker],
        provider: Worker,
        *,
        fractional_bits: int = 16,
        parallel: bool = False,
    ) -> None:
        if not 0 <= fractional_bits <= MAX_SCALE // 2:
            raise MPCError(f"fractional bits must be in 0..{MAX_SCALE // 2}, got {fractional_bits}")
        super().__init__(parties, provider, session_prefix="auth", parallel=parallel)
        self.fractional_bits = fractional_bits
        self.unchecked = 0  # opened elements since the last check
        self._ids = itertools.count()
        try:
            for worker in (*self.parties, provider):
                self._keygen(worker)
            self._each([*self.parties, provider], self._join)
            keys = [self._keys[w.id] for w in self.parties]
            sealed = self._call(
                provider, lambda p: p.party_op(SETUP, session=self.session, public_keys=keys)
            )["sealed"]
            provider_key = self._keys[provider.id]
            self._on_parties(lambda i: {"sealed": sealed[i], "provider_key": provider_key}, KEY)
        except Exception:
            self.close()
            raise

    def __enter__(self) -> AuthenticatedGroup:
        return self

    def _join(self, worker: Worker) -> Any:
        return worker.party_op(
            JOIN, session=self.session, parties=[p.id for p in self.parties],
            provider=self.provider.id, fractional_bits=self.fractional_bits,
        )  # fmt: skip

    def _made(
        self, run: Callable[[str], Any], shape: Sequence[int], scale: int
    ) -> AuthenticatedShared:
        self._check_open()
        tensor_id = f"t{next(self._ids)}"
        try:
            run(tensor_id)
        except Exception:
            self._release(tensor_id)
            raise
        return AuthenticatedShared(self, tensor_id, torch.Size(shape), scale)

    # ------------------------------------------------------------ inputs

    def share(self, value: torch.Tensor | Pointer) -> AuthenticatedShared:
        """Input ``value`` with MACs: the coordinator's float tensor, or a pointer to
        a worker's (which masks it itself: it never passes the coordinator). Its
        fixed point has the group's fractional bits."""
        self._check_open()
        keys = [self._keys[w.id] for w in self.parties]
        if isinstance(value, Pointer):
            owner = value.worker
            if owner is self.provider:
                raise MPCError("the provider deals the input masks: it cannot also input a value")
            joined = owner.id in self._keys
            owner_key = self._keygen(owner)
            if not joined and owner not in self.parties:  # an owner outside the group
                self._call(owner, self._join)
            shape = list(value.shape) if value.shape is not None else None
            if shape is None:
                raise MPCError("share() needs a pointer whose shape is known")
            dealt = self._call(
                self.provider,
                lambda p: p.party_op(
                    DEAL_INPUT, session=self.session, shape=shape, owner=owner.id,
                    owner_key=owner_key, public_keys=keys,
                ),
            )  # fmt: skip
            eps = self._call(
                owner,
                lambda w: w.party_op(
                    MASK_INPUT, session=self.session, obj_id=value.id_on(owner), shape=shape,
                    fractional_bits=self.fractional_bits, serial=dealt["serial"],
                    owner_sealed=dealt["owner_sealed"], provider_key=self._keys[self.provider.id],
                ),
            )["eps"]  # fmt: skip
        else:
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise MPCError("share() takes a float tensor or a pointer to one")
            encoded = field_encode(value.detach(), self.fractional_bits)
            shape = list(encoded.shape)
            dealt = self._call(
                self.provider,
                lambda p: p.party_op(
                    DEAL_INPUT, session=self.session, shape=shape, owner=COORDINATOR,
                    public_keys=keys,
                ),
            )  # fmt: skip
            mask = _field_reply(dealt["mask"], shape, "the input mask")
            eps = field_sub(encoded, mask)
        provider_key = self._keys[self.provider.id]

        def run(tensor_id: str) -> None:
            self._on_parties(
                lambda i: {
                    "id": tensor_id, "shape": shape, "eps": eps, "serial": dealt["serial"],
                    "sealed": dealt["sealed"][i], "provider_key": provider_key,
                },
                INPUT,
            )  # fmt: skip

        return self._made(run, shape, self.fractional_bits)

    # ------------------------------------------------------------ operations

    def _local(
        self, op: str, inputs: Sequence[AuthenticatedShared], scale: int, **args: Any
    ) -> AuthenticatedShared:
        sizes = dict(args)
        if "value" in sizes:
            sizes["value"] = tuple(sizes["value"].shape)
        try:
            shape = local_shape(op, [tuple(x.shape) for x in inputs], sizes)
        except ValueError as exc:
            raise MPCError(f"{op}: {exc}") from None
        if torch.Size(shape).numel() > MAX_ELEMENTS:
            raise MPCError(f"{op} would make a tensor of shape {shape}: too large")
        ids = [x.id for x in inputs]
        message = {k: (list(v) if isinstance(v, tuple) else v) for k, v in args.items()}

        def run(tensor_id: str) -> None:
            self._on_parties(
                lambda i: {"operation": op, "inputs": ids, "out": tensor_id, **message}, LOCAL
            )

        return self._made(run, shape, scale)

    def _product(
        self, kind: str, inputs: Sequence[AuthenticatedShared], scale: int
    ) -> AuthenticatedShared:
        """A Beaver product (or square) with an authenticated tuple, in two rounds."""
        shapes = [list(x.shape) for x in inputs]
        try:
            out = shapes[0] if kind == "square" else list(bilinear_shape(kind, *shapes))
        except ValueError as exc:
            raise MPCError(f"{kind}: {exc}") from None
        if scale > MAX_SCALE:
            raise MPCError(
                f"this {kind} would carry {scale} fractional bits, more than {MAX_SCALE}: "
                "authenticated tensors are not truncated, so a computation holds two or "
                "three products (fewer fractional bits allow more)"
            )
        if self.unchecked >= AUTO_CHECK_ELEMENTS:
            self.check()  # the parties' logs stay bounded
        dealt = self._call(
            self.provider,
            lambda p: p.party_op(
                DEAL, session=self.session, kind=kind, shapes=shapes, count=1,
                public_keys=[self._keys[w.id] for w in self.parties],
            ),
        )["tuples"][0]  # fmt: skip
        provider_key = self._keys[self.provider.id]
        ids = [x.id for x in inputs]

        def run(tensor_id: str) -> None:
            replies = self._on_parties(
                lambda i: {
                    "kind": kind, "inputs": ids, "out": tensor_id, "serial": dealt["serial"],
                    "sealed": dealt["sealed"][i], "provider_key": provider_key,
                },
                MASK,
            )  # fmt: skip
            opened = [
                _open_sum([r["masked"][j] for r in replies], shapes[j]) for j in range(len(ids))
            ]
            self._on_parties(lambda i: {"out": tensor_id, "opened": opened}, FINISH)
            self.unchecked += sum(t.numel() for t in opened)

        return self._made(run, out, scale)

    # ------------------------------------------------------------ opening

    def check(self, outputs: Sequence[tuple[str, torch.Tensor]] = ()) -> None:
        """The MAC check over every opening since the last one (and ``outputs``, values
        opened to the coordinator): MPCError if any opened value is not the one the
        parties' MACs authenticate — a party lied about a share, or the opening was
        altered on its way."""
        self._check_open()
        seed = torch.frombuffer(bytearray(os.urandom(32)), dtype=torch.uint8)  # drawn now
        items = [{"id": tensor_id, "value": value} for tensor_id, value in outputs]
        replies = self._on_parties(lambda i: {"outputs": items, "seed": seed}, CHECK)
        self.unchecked = 0
        sigmas = [r["sigma"] for r in replies]
        if not all(isinstance(s, int) and 0 <= s < P for s in sigmas):
            raise MPCError("a party answered the MAC check with something other than σ ∈ F_p")
        if sum(sigmas) % P != 0:
            # SPDZ aborts: values computed from a tampered opening are no good either.
            self.close()
            raise MPCError(
                "MAC check failed: an opened value is not the one the MACs authenticate "
                "(a party altered a share, or an opening was altered); nothing is returned "
                "and the group is closed"
            )

    def reveal(self, x: AuthenticatedShared) -> torch.Tensor:
        """``x`` opened to the coordinator (float64), after the MAC check has passed."""
        self._check_open()
        replies = self._on_parties(lambda i: {"id": x.id}, OPEN)
        opened = _open_sum([r["share"] for r in replies], list(x.shape))
        self.check([(x.id, opened)])
        return field_decode_int(opened).to(torch.float64) / float(2**x.scale)


def _field_reply(value: Any, shape: Sequence[int], what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.int64:
        raise MPCError(f"{what} is not a tensor of field elements")
    if list(value.shape) != list(shape):
        raise MPCError(f"{what} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    if value.numel() and (int(value.min()) < 0 or int(value.max()) >= P):
        raise MPCError(f"{what} holds values outside F_p")
    return value


def _open_sum(parts: Sequence[Any], shape: Sequence[int]) -> torch.Tensor:
    """The sum in F_p of every party's share or masked value, checked."""
    total: torch.Tensor | None = None
    for part in parts:
        part = _field_reply(part, shape, "a party's answer")
        total = part.clone() if total is None else field_add(total, part)
    assert total is not None
    return total
