"""Additive secret sharing over Z/2^64 among n ≥ 2 parties.

A secret s is split into n shares that sum to s modulo 2^64: n − 1 of them
uniformly random (from a CSPRNG), the last s minus their sum. Any n − 1 shares
are independent of s, so only all parties together can reconstruct it
(Cramer, Damgård & Nielsen, *Secure Multiparty Computation and Secret Sharing*,
2015, §3). Shares are plain int64 tensors: they cross worker boundaries through
the ordinary worker protocol, never pickled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpc.errors import MPCError
from mpc.random import SecureRandom

__all__ = ["reconstruct", "share"]


def share(secret: torch.Tensor, parties: int, rng: SecureRandom) -> list[torch.Tensor]:
    """Split an int64 ``secret`` into ``parties`` additive shares."""
    if parties < 2:
        raise MPCError(f"secret sharing needs at least 2 parties, got {parties}")
    if secret.dtype != torch.int64:
        raise MPCError(f"secrets are ring elements (int64), got {secret.dtype}")
    shares = [rng.ring_elements(secret.shape) for _ in range(parties - 1)]
    last = secret.clone()
    for masked in shares:
        last -= masked  # wraps modulo 2^64
    shares.append(last)
    return shares


def reconstruct(shares: Sequence[torch.Tensor]) -> torch.Tensor:
    """The secret: the sum of all shares modulo 2^64."""
    if len(shares) < 2:
        raise MPCError(f"reconstruction needs every share (at least 2), got {len(shares)}")
    shape = shares[0].shape
    total = torch.zeros(shape, dtype=torch.int64)
    for index, part in enumerate(shares):
        if part.dtype != torch.int64 or part.shape != shape:
            raise MPCError(
                f"share {index} is {part.dtype} {tuple(part.shape)}, expected int64 {tuple(shape)}"
            )
        total += part
    return total
