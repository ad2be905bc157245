"""A fixed-point tensor secret-shared among n parties (local simulation of the parties).

``SharedTensor`` holds one int64 share per party plus the encoder and the
crypto provider its multiplications draw from. Linear operations are local
(no communication); products go through :func:`mpc.beaver.beaver` and are
truncated back to ``f`` fractional bits. This is the arithmetic of the
distributed protocols, which place each share on its own worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mpc import beaver as bv
from mpc.errors import MPCError
from mpc.provider import TupleProvider
from mpc.random import SecureRandom
from mpc.ring import FixedPointEncoder
from mpc.sharing import reconstruct, share

__all__ = ["SharedTensor"]


@dataclass(frozen=True)
class SharedTensor:
    """Shares of round(x · 2^f), one per party."""

    shares: tuple[torch.Tensor, ...]
    provider: TupleProvider
    encoder: FixedPointEncoder = field(default_factory=FixedPointEncoder)

    @classmethod
    def from_float(
        cls,
        values: torch.Tensor,
        provider: TupleProvider,
        rng: SecureRandom,
        encoder: FixedPointEncoder | None = None,
    ) -> SharedTensor:
        """Encode and share ``values`` among the provider's parties."""
        encoder = encoder or FixedPointEncoder()
        parts = share(encoder.encode(values), provider.parties, rng)
        return cls(tuple(parts), provider, encoder)

    # ------------------------------------------------------------ basics

    @property
    def shape(self) -> torch.Size:
        return self.shares[0].shape

    def _with(self, parts: Sequence[torch.Tensor]) -> SharedTensor:
        return SharedTensor(tuple(parts), self.provider, self.encoder)

    def reconstruct(self) -> torch.Tensor:
        """Open the value (every share combined) as float64."""
        return self.encoder.decode(reconstruct(list(self.shares)))

    def _truncate(self, parts: list[torch.Tensor]) -> SharedTensor:
        return self._with(bv.truncate(parts, self.encoder.fractional_bits, self.provider))

    def _public(self, value: torch.Tensor | float | int) -> torch.Tensor:
        return self.encoder.encode(torch.as_tensor(value, dtype=torch.float64))

    # ------------------------------------------------------------ linear (local)

    def __add__(self, other: SharedTensor | torch.Tensor | float | int) -> SharedTensor:
        if isinstance(other, SharedTensor):
            return self._with([a + b for a, b in zip(self.shares, other.shares, strict=True)])
        parts = list(self.shares)
        parts[0] = parts[0] + self._public(other)  # a public value is added by one party
        return self._with(parts)

    def __neg__(self) -> SharedTensor:
        return self._with([-part for part in self.shares])

    def __sub__(self, other: SharedTensor | torch.Tensor | float | int) -> SharedTensor:
        return self + (-other)

    def sum(self, dim: int | tuple[int, ...] | None = None) -> SharedTensor:
        if dim is None:
            return self._with([part.sum() for part in self.shares])
        return self._with([part.sum(dim=dim) for part in self.shares])

    def mean(self, dim: int | None = None) -> SharedTensor:
        count = self.shares[0].numel() if dim is None else self.shape[dim]
        return self.sum(dim) / count

    # ------------------------------------------------------------ products

    def __mul__(self, other: SharedTensor | torch.Tensor | float | int) -> SharedTensor:
        if isinstance(other, SharedTensor):
            return self._truncate(bv.mul(list(self.shares), list(other.shares), self.provider))
        if isinstance(other, int) and not isinstance(other, bool):
            return self._with([part * other for part in self.shares])  # exact, no rescaling
        public = self._public(other)
        return self._truncate([part * public for part in self.shares])

    def __truediv__(self, divisor: float | int) -> SharedTensor:
        """Division by a public number: multiplication by its encoded inverse."""
        if divisor == 0:
            raise MPCError("division by zero")
        return self * (1.0 / float(divisor))

    def matmul(self, other: SharedTensor | torch.Tensor) -> SharedTensor:
        if isinstance(other, SharedTensor):
            return self._truncate(bv.matmul(list(self.shares), list(other.shares), self.provider))
        public = self._public(other)
        return self._truncate([part @ public for part in self.shares])

    def conv2d(self, weight: SharedTensor, **kwargs: Any) -> SharedTensor:
        parts = bv.conv2d(list(self.shares), list(weight.shares), self.provider, **kwargs)
        return self._truncate(parts)

    def square(self) -> SharedTensor:
        return self._truncate(bv.square(list(self.shares), self.provider))

    def polynomial(self, coefficients: Sequence[float]) -> SharedTensor:
        """Σ_k c_k · x^k for public coefficients c_0, c_1, ... (low degree: one product each)."""
        if not coefficients:
            raise MPCError("a polynomial needs at least one coefficient")
        result = self * 0 + float(coefficients[0])
        power: SharedTensor | None = None
        for degree, coefficient in enumerate(coefficients[1:], start=1):
            power = self if power is None else (self.square() if degree == 2 else power * self)
            if coefficient != 0:
                result = result + power * float(coefficient)
        return result

    def avg_pool2d(self, kernel: int) -> SharedTensor:
        """Non-overlapping k×k average pooling of (N, C, H, W): local sums, public division."""
        n, c, h, w = self.shape
        if h % kernel or w % kernel:
            raise MPCError(f"avg_pool2d({kernel}) needs H and W divisible by it, got {h}×{w}")
        parts = [
            part.reshape(n, c, h // kernel, kernel, w // kernel, kernel).sum(dim=(3, 5))
            for part in self.shares
        ]
        return self._with(parts) / (kernel * kernel)
