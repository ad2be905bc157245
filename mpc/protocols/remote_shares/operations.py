"""The share group's operations: requests to the parties, local steps, products.

:class:`GroupOperations` is the part of :class:`~.coordinator.ShareGroup` that
turns an operation on :class:`~.tensor.RemoteShared` handles into party steps:
one local step for a linear operation; for a product, two rounds with a tuple
the provider dealt (``dealt_steps``), or, by a tensor one party holds whole,
one ring operation on each side (``held_steps``); truncation locally for two
parties and with a dealt pair for more. Tuples come from the stock
(``dealing``); the session, the parties and the sharing are the group's own
(``coordinator``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch

from mpc.errors import MPCError
from mpc.protocols.remote_shares.dealing import TupleStock, tuple_key
from mpc.protocols.remote_shares.dealt_steps import FINISH, MASK
from mpc.protocols.remote_shares.held_steps import (
    FINISH_HELD,
    FINISH_MASKED,
    MASK_HELD,
)
from mpc.protocols.remote_shares.steps import LOCAL
from mpc.protocols.remote_shares.tensor import RemoteShared, held_result, result_shape
from mpc.protocols.remote_shares.vault import BILINEAR, dealt_shapes
from mpc.ring import FixedPointEncoder
from workers.base import Worker

if TYPE_CHECKING:
    from mpc.protocols.remote_shares.coordinator import ShareGroup

__all__ = ["GroupOperations", "open_sum"]

_DROP_BATCH = 64  # dropped ids sent in one request, with the next operation


class GroupOperations(TupleStock):
    """Requests and operations of a share group (see the module docstring)."""

    encoder: FixedPointEncoder
    _new_id: Callable[[], str]

    def _made(
        self, run: Callable[[str], Any], shape: torch.Size, holder: int | None = None
    ) -> RemoteShared:
        """Run the steps that make a new tensor; if any fails, drop what they made.
        While planning (:meth:`prefetch_for`) nothing runs: the handle is a shape."""
        self._check_open()
        tensor_id = self._new_id()
        if self._planning is not None:
            handle = RemoteShared(cast("ShareGroup", self), tensor_id, shape, holder)
            handle._finalizer.detach()  # nothing to drop: no party made it
            return handle
        try:
            run(tensor_id)
        except Exception:
            self._release(tensor_id)
            raise
        return RemoteShared(cast("ShareGroup", self), tensor_id, shape, holder)

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
        shape = result_shape(op, [x.shape for x in inputs], publics)
        message = {k: (list(v) if isinstance(v, tuple) else v) for k, v in args.items()}
        if public is not None:
            message["value"] = public

        def run(tensor_id: str) -> None:
            ids = [x.id for x in inputs]
            self._on_parties(
                lambda i: {"operation": op, "inputs": ids, "out": tensor_id, **message}, LOCAL
            )

        return self._made(run, shape, held_result(op, inputs, len(self.parties)))

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
            opened = [
                open_sum([r["masked"][j] for r in replies], shapes[j]) for j in range(len(ids))
            ]
            bits = self.encoder.fractional_bits if local_truncation else 0
            self._on_parties(
                lambda i: {"out": tensor_id, "opened": opened, "truncate": bits}, FINISH
            )

        result = self._made(run, torch.Size(parts[-1]))
        if scaled and not local_truncation:
            return self._truncate(result)
        return result

    def _held_product(
        self, kind: str, x: RemoteShared, w: RemoteShared, kwargs: dict[str, int]
    ) -> RemoteShared:
        """``kind(x, w)`` by a held ``w``: the others publish their masked shares of x,
        the holder finishes with one ring operation (``held_steps``)."""
        assert w.holder is not None
        shapes = [tuple(x.shape), tuple(w.shape)]
        out_shape = dealt_shapes(kind, shapes, kwargs)[-1]
        key = tuple_key(f"held:{w.id}:{kind}", shapes, kwargs)
        if self._planning is not None:
            dealt = self._plan(
                key, lambda n: self.prefetch_held(kind, shapes[0], w, n, **kwargs), fix=w
            )
        else:
            dealt = self._take(key, lambda: self.prefetch_held(kind, shapes[0], w, 1, **kwargs))
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
            opened = open_sum([r["masked"] for r in replies], shapes[0])

            def finish(p: Worker) -> Any:
                if p is not self.parties[j]:  # op(a_i, f): needs no opened value
                    return p.party_op(FINISH_MASKED, session=self.session, out=tensor_id, **common)
                return p.party_op(
                    FINISH_HELD, session=self.session, out=tensor_id, opened=opened,
                    sealed=dealt["sealed"][j], **common,
                )  # fmt: skip

            self._each(self.parties, finish)

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

    def _truncate(self, x: RemoteShared, bits: int | None = None) -> RemoteShared:
        """x / 2^bits (default f): one local step for two parties, a dealt pair for more."""
        bits = self.encoder.fractional_bits if bits is None else bits
        if len(self.parties) == 2:
            return self._local("truncate", [x], bits=bits)
        return self._product("trunc", [x], {"bits": bits}, scaled=False)

    def _public(self, value: torch.Tensor | float | int) -> torch.Tensor:
        return self.encoder.encode(torch.as_tensor(value, dtype=torch.float64))


def open_sum(parts: Sequence[Any], shape: Sequence[int]) -> torch.Tensor:
    """The sum of every party's masked value (Beaver's opening), checked."""
    for part in parts:
        if not isinstance(part, torch.Tensor) or part.dtype != torch.int64:
            raise MPCError("a party answered with something other than ring elements")
        if tuple(part.shape) != tuple(shape):
            raise MPCError(f"a party answered shape {tuple(part.shape)}, expected {tuple(shape)}")
    if not parts:
        return torch.zeros(tuple(shape), dtype=torch.int64)
    total: torch.Tensor = parts[0].clone() if len(parts) == 1 else parts[0] + parts[1]
    for part in parts[2:]:
        total += part
    return total
