"""A tensor secret-shared among a share group's parties: the coordinator's handle.

:class:`RemoteShared` is an id and a shape; the shares stay in the parties'
vaults. Its operators check shapes (``shapes``) and ask its group
(``coordinator``, ``operations``) to run the steps; nothing is opened except
by :meth:`RemoteShared.get` and :meth:`RemoteShared.reveal_to`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from mpc.errors import MPCError
from mpc.protocols.remote_shares.shapes import bilinear_shape, local_shape
from mpc.protocols.remote_shares.vault import MAX_ELEMENTS
from workers.base import Worker

if TYPE_CHECKING:
    from mpc.protocols.remote_shares.coordinator import ShareGroup

__all__ = ["RemoteShared", "held_result", "result_shape"]


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
        scalar = isinstance(other, float) or (isinstance(other, torch.Tensor) and other.ndim == 0)
        extra = _extra_bits(float(other)) if scalar else 0
        if extra:
            # A small public factor encoded with 2^f alone would lose its digits
            # (1/3000 is 22 units): encode it with `extra` more bits, shift them off.
            bits = self.group.encoder.fractional_bits + extra
            encoded = torch.tensor(round(float(other) * 2.0**bits), dtype=torch.int64)
            product = self.group._local("mul_public", [self], public=encoded)
            return self.group._truncate(product, bits)
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
            _check_matmul(self.shape, other.shape)
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
            bilinear_shape("conv2d", tuple(self.shape), tuple(weight.shape), **kwargs)
        except ValueError as exc:
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


def _check_matmul(a: torch.Size, b: torch.Size) -> None:
    try:
        bilinear_shape("matmul", tuple(a), tuple(b))
    except ValueError as exc:
        raise MPCError(f"matmul of shapes {tuple(a)} and {tuple(b)}: {exc}") from None


def _broadcastable_same(a: torch.Size, b: torch.Size, op: str) -> None:
    """Shared elementwise products take operands of one shape (a triple has one)."""
    if a != b:
        raise MPCError(f"{op} of shared tensors needs equal shapes, got {tuple(a)} and {tuple(b)}")


# Local operations after which a tensor one party held is still held by it
# (the others' zero shares stay zero); anything else spreads it.
_KEEPS_HOLDER = frozenset(
    {"add", "sub", "neg", "mul_public", "matmul_public", "rmatmul_public", "sum", "reshape",
     "pool_sum", "transpose", "narrow"}
)  # fmt: skip


def held_result(op: str, inputs: Sequence[RemoteShared], parties: int) -> int | None:
    holders = {x.holder for x in inputs}
    if len(holders) != 1:
        return None
    (holder,) = holders
    if op in _KEEPS_HOLDER or (op == "truncate" and parties == 2):
        return holder
    if op == "add_public" and holder == 0:  # party 0 adds the public value
        return holder
    return None


def result_shape(op: str, shapes: Sequence[torch.Size], publics: dict[str, Any]) -> torch.Size:
    """The result's shape (``shapes``' rules): an MPCError for shapes that do not
    fit, or a result too large, before any party is asked."""
    sizes = dict(publics)
    if "value" in sizes:
        sizes["value"] = tuple(sizes["value"].shape)
    try:
        shape = torch.Size(local_shape(op, [tuple(s) for s in shapes], sizes))
    except ValueError as exc:
        described = " and ".join(str(tuple(s)) for s in shapes)
        raise MPCError(f"{op} of shapes {described}: {exc}") from None
    if shape.numel() > MAX_ELEMENTS:
        raise MPCError(f"{op} would make a tensor of shape {tuple(shape)}: too large")
    return shape


def _extra_bits(factor: float) -> int:
    """Bits beyond 2^f that keep a public factor below one as precise as one is
    (at most 16 more): its encoding then stays within 2^f, as 1's does."""
    if factor == 0 or abs(factor) >= 1:
        return 0
    return min(16, max(0, -math.frexp(abs(factor))[1]))
