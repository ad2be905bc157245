"""The ring Z/2^64 and fixed-point encoding of reals into it.

Ring elements are int64 tensors; addition, subtraction and multiplication wrap
modulo 2^64 (two's complement), which is exactly arithmetic in Z/2^64. Reals
are encoded as round(x · 2^f) with ``f`` fractional bits (CrypTen's
``FixedPointEncoder``); a product of two encodings carries 2f fractional bits
and must be truncated by 2^f.

Range. An encoding must stay well inside the signed range so that a product of
two encodings, before truncation, still fits: |x · y| · 2^(2f) < 2^63. With the
default f = 16 that is |x · y| < 2^31. The encoder refuses |x| ≥ 2^(62 − f)
outright (an ``MPCError`` naming the value and the limit) rather than letting
it wrap silently; keeping products in range is the caller's contract, since a
secret-shared product cannot be checked without revealing it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpc.errors import MPCError

__all__ = ["DEFAULT_FRACTIONAL_BITS", "FixedPointEncoder", "wrap_add", "wrap_mul", "wrap_sub"]

DEFAULT_FRACTIONAL_BITS = 16


def wrap_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b in Z/2^64."""
    return a + b


def wrap_sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a − b in Z/2^64."""
    return a - b


def wrap_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a · b in Z/2^64 (int64 multiplication wraps on every platform torch supports)."""
    return a * b


@dataclass(frozen=True)
class FixedPointEncoder:
    """Encode floats as int64 with ``fractional_bits`` bits after the binary point."""

    fractional_bits: int = DEFAULT_FRACTIONAL_BITS

    def __post_init__(self) -> None:
        if not 0 <= self.fractional_bits <= 30:
            raise MPCError(f"fractional bits must be in 0..30, got {self.fractional_bits}")

    @property
    def scale(self) -> int:
        return 1 << self.fractional_bits

    @property
    def limit(self) -> float:
        """Largest magnitude (exclusive) the encoder accepts: 2^(62 − f)."""
        return float(2 ** (62 - self.fractional_bits))

    def encode(self, values: torch.Tensor | float) -> torch.Tensor:
        """round(x · 2^f) as int64; MPCError for NaN, ±inf or |x| ≥ ``limit``."""
        x = torch.as_tensor(values, dtype=torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise MPCError("cannot encode NaN or infinity")
        if x.numel() and float(x.abs().max()) >= self.limit:
            worst = float(x.abs().max())
            raise MPCError(
                f"value {worst:g} is outside the fixed-point range ±{self.limit:g} "
                f"({self.fractional_bits} fractional bits)"
            )
        return torch.round(x * self.scale).to(torch.int64)

    def decode(self, encoded: torch.Tensor) -> torch.Tensor:
        """The float64 values of int64 encodings."""
        if encoded.dtype != torch.int64:
            raise MPCError(f"encodings are int64, got {encoded.dtype}")
        return encoded.to(torch.float64) / self.scale
