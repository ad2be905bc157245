"""A tensor shared with SPDZ MACs among an authenticated group's parties: the handle.

:class:`AuthenticatedShared` is an id, a shape and a *scale*: the fractional
bits of its fixed-point encoding. Inputs have the group's f; a product's scale
is the sum of its operands' (nothing is truncated), a sum aligns its operands'
scales by multiplying the finer one's partner by a power of two (exact in
F_p). Decoding is right while |value| · 2^scale < 2^60, hence
:data:`MAX_SCALE`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import torch

from mpc.errors import MPCError
from mpc.field import ENCODING_LIMIT, P, field_encode_int

if TYPE_CHECKING:
    from mpc.protocols.authenticated_shares.coordinator import AuthenticatedGroup

__all__ = ["MAX_SCALE", "AuthenticatedShared"]

Operand = Union["AuthenticatedShared", torch.Tensor, float, int]

MAX_SCALE = 48  # fractional bits a tensor may carry: values up to ±2^12 then decode


class AuthenticatedShared:
    """A fixed-point tensor shared with MACs (see the module docstring)."""

    def __init__(
        self, group: AuthenticatedGroup, tensor_id: str, shape: torch.Size, scale: int
    ) -> None:
        self.group = group
        self.id = tensor_id
        self.shape = torch.Size(shape)
        self.scale = scale
        self._finalizer = weakref.finalize(self, group._release, tensor_id)

    def __repr__(self) -> str:
        names = ", ".join(w.id for w in self.group.parties)
        return (
            f"AuthenticatedShared({self.id}, shape={tuple(self.shape)}, "
            f"scale=2^{self.scale}, parties=[{names}])"
        )

    def _same_group(self, other: AuthenticatedShared) -> None:
        if other.group is not self.group:
            raise MPCError("cannot combine tensors of two authenticated groups")

    def _public(self, value: torch.Tensor | float | int, scale: int) -> torch.Tensor:
        """A public value encoded with ``scale`` fractional bits, as field elements."""
        scaled = torch.round(torch.as_tensor(value, dtype=torch.float64) * float(2**scale))
        if not bool(torch.isfinite(scaled).all()) or (
            scaled.numel() and float(scaled.abs().max()) >= ENCODING_LIMIT
        ):
            raise MPCError(f"public value outside the fixed-point range at 2^{scale}")
        return field_encode_int(scaled.to(torch.int64))

    def _rescaled(self, scale: int) -> AuthenticatedShared:
        """This value at a finer ``scale``: times 2^(scale − self.scale), exactly."""
        if scale == self.scale:
            return self
        factor = torch.tensor(1 << (scale - self.scale), dtype=torch.int64)
        return self.group._local("mul_public", [self], scale, value=factor)

    # ------------------------------------------------------------ linear

    def __add__(
        self, other: AuthenticatedShared | torch.Tensor | float | int
    ) -> AuthenticatedShared:
        if isinstance(other, AuthenticatedShared):
            self._same_group(other)
            scale = max(self.scale, other.scale)
            return self.group._local("add", [self._rescaled(scale), other._rescaled(scale)], scale)
        return self.group._local(
            "add_public", [self], self.scale, value=self._public(other, self.scale)
        )

    __radd__ = __add__

    def __neg__(self) -> AuthenticatedShared:
        return self.group._local("neg", [self], self.scale)

    def __sub__(
        self, other: AuthenticatedShared | torch.Tensor | float | int
    ) -> AuthenticatedShared:
        if isinstance(other, AuthenticatedShared):
            self._same_group(other)
            scale = max(self.scale, other.scale)
            return self.group._local("sub", [self._rescaled(scale), other._rescaled(scale)], scale)
        return self + (-torch.as_tensor(other, dtype=torch.float64))

    def __rsub__(self, other: torch.Tensor | float | int) -> AuthenticatedShared:
        return (-self) + other

    def sum(
        self, dim: int | Sequence[int] | None = None, keepdim: bool = False
    ) -> AuthenticatedShared:
        dims = [] if dim is None else ([dim] if isinstance(dim, int) else list(dim))
        return self.group._local("sum", [self], self.scale, dims=dims, keepdim=keepdim)

    def mean(
        self, dim: int | Sequence[int] | None = None, keepdim: bool = False
    ) -> AuthenticatedShared:
        if dim is None:
            count = self.shape.numel()
        else:
            dims = [dim] if isinstance(dim, int) else list(dim)
            count = math.prod(self.shape[d] for d in dims)
        return self.sum(dim, keepdim) * (1.0 / count)

    def reshape(self, *shape: int) -> AuthenticatedShared:
        resolved = torch.empty(self.shape, device="meta").reshape(shape).shape
        return self.group._local("reshape", [self], self.scale, shape=list(resolved))

    def flatten(self, start_dim: int = 0) -> AuthenticatedShared:
        resolved = torch.empty(self.shape, device="meta").flatten(start_dim).shape
        return self.group._local("reshape", [self], self.scale, shape=list(resolved))

    def t(self) -> AuthenticatedShared:
        if len(self.shape) != 2:
            raise MPCError(f"t() transposes a matrix, not a tensor of shape {tuple(self.shape)}")
        return self.group._local("transpose", [self], self.scale)

    # ------------------------------------------------------------ products

    def __mul__(
        self, other: AuthenticatedShared | torch.Tensor | float | int
    ) -> AuthenticatedShared:
        if isinstance(other, AuthenticatedShared):
            self._same_group(other)
            if self.shape != other.shape:
                raise MPCError(
                    f"* of authenticated tensors needs equal shapes, got {tuple(self.shape)} "
                    f"and {tuple(other.shape)}"
                )
            return self.group._product("mul", [self, other], self.scale + other.scale)
        if isinstance(other, int) and not isinstance(other, bool):
            value = torch.tensor(other % P, dtype=torch.int64)  # exact: no scale
            return self.group._local("mul_public", [self], self.scale, value=value)
        scale = self.scale + self.group.fractional_bits
        _check_scale(scale, "*")
        value = self._public(other, self.group.fractional_bits)
        return self.group._local("mul_public", [self], scale, value=value)

    __rmul__ = __mul__

    def __truediv__(self, divisor: float | int) -> AuthenticatedShared:
        if not isinstance(divisor, (int, float)) or divisor == 0:
            raise MPCError(f"divide by a non-zero public number, not {divisor!r}")
        return self * (1.0 / float(divisor))

    def __matmul__(self, other: AuthenticatedShared | torch.Tensor) -> AuthenticatedShared:
        if isinstance(other, AuthenticatedShared):
            self._same_group(other)
            return self.group._product("matmul", [self, other], self.scale + other.scale)
        scale = self.scale + self.group.fractional_bits
        _check_scale(scale, "@")
        value = self._public(other, self.group.fractional_bits)
        return self.group._local("matmul_public", [self], scale, value=value)

    def __rmatmul__(self, other: torch.Tensor) -> AuthenticatedShared:
        scale = self.scale + self.group.fractional_bits
        _check_scale(scale, "@")
        value = self._public(other, self.group.fractional_bits)
        return self.group._local("rmatmul_public", [self], scale, value=value)

    def square(self) -> AuthenticatedShared:
        return self.group._product("square", [self], 2 * self.scale)

    # ------------------------------------------------------------ opening

    def get(self) -> torch.Tensor:
        """The value opened to the coordinator (float64), once the MAC check passed."""
        return self.group.reveal(self)

    def delete(self) -> None:
        if self._finalizer.detach() is not None:
            self.group._release(self.id)


def _check_scale(scale: int, op: str) -> None:
    if scale > MAX_SCALE:
        raise MPCError(
            f"{op} would carry {scale} fractional bits, more than {MAX_SCALE}: authenticated "
            "tensors are not truncated"
        )
