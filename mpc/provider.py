"""Correlated randomness for multiplications: the crypto provider.

One seam (CrypTen's ``TupleProvider``): protocols ask a provider for Beaver
triples, square pairs and truncation pairs, already secret-shared among the
parties, and never care where they come from. ``TrustedDealer`` is the
classic third party that samples them from a CSPRNG (the "crypto provider" of
PySyft 0.2); an offline OT/HE-based generator could replace it behind the same
interface. Preprocessing can be generated ahead, in batches (``prefetch``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mpc.errors import MPCError
from mpc.random import SecureRandom
from mpc.sharing import share

__all__ = ["BILINEAR_OPS", "Shares", "Triple", "TrustedDealer", "TupleProvider"]

Shares = list[torch.Tensor]
Triple = tuple[Shares, Shares, Shares]

# The bilinear maps a Beaver triple can serve: c = op(a, b) over Z/2^64.
BILINEAR_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "mul": torch.mul,
    "matmul": torch.matmul,
    "conv2d": F.conv2d,
}


def _key(
    op: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...], kwargs: dict[str, Any]
) -> str:
    return f"{op}|{a_shape}|{b_shape}|{sorted(kwargs.items())}"


class TupleProvider(ABC):
    """Supplies secret-shared correlated randomness to ``parties`` parties."""

    def __init__(self, parties: int) -> None:
        if parties < 2:
            raise MPCError(f"a crypto provider serves at least 2 parties, got {parties}")
        self.parties = parties

    @abstractmethod
    def beaver_triple(
        self, op: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...], **kwargs: Any
    ) -> Triple:
        """Shares of uniformly random a, b and of c = op(a, b, **kwargs)."""

    @abstractmethod
    def square_pair(self, shape: tuple[int, ...]) -> tuple[Shares, Shares]:
        """Shares of a random a and of a · a (elementwise)."""

    @abstractmethod
    def truncation_pair(self, shape: tuple[int, ...], bits: int) -> tuple[Shares, Shares]:
        """Shares of a random r and of r >> bits (arithmetic shift), for n-party truncation."""


class TrustedDealer(TupleProvider):
    """A third party that samples every tuple from its own CSPRNG and deals the shares."""

    def __init__(self, parties: int, rng: SecureRandom | None = None) -> None:
        super().__init__(parties)
        self._rng = rng or SecureRandom()
        self._stock: defaultdict[str, deque[Triple]] = defaultdict(deque)
        self.generated = 0

    def _random(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self._rng.ring_elements(shape)

    def _make_triple(
        self, op: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...], kwargs: dict[str, Any]
    ) -> Triple:
        if op not in BILINEAR_OPS:
            raise MPCError(f"no Beaver triples for {op!r}; known: {', '.join(BILINEAR_OPS)}")
        a, b = self._random(a_shape), self._random(b_shape)
        c = BILINEAR_OPS[op](a, b, **kwargs)
        self.generated += 1
        return (
            share(a, self.parties, self._rng),
            share(b, self.parties, self._rng),
            share(c, self.parties, self._rng),
        )

    def prefetch(
        self,
        op: str,
        a_shape: tuple[int, ...],
        b_shape: tuple[int, ...],
        count: int,
        **kwargs: Any,
    ) -> None:
        """Generate ``count`` triples ahead (the offline phase), used before fresh ones."""
        key = _key(op, a_shape, b_shape, kwargs)
        for _ in range(count):
            self._stock[key].append(self._make_triple(op, a_shape, b_shape, kwargs))

    def beaver_triple(
        self, op: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...], **kwargs: Any
    ) -> Triple:
        stock = self._stock.get(_key(op, a_shape, b_shape, kwargs))
        if stock:
            return stock.popleft()  # each triple is used exactly once
        return self._make_triple(op, a_shape, b_shape, kwargs)

    def square_pair(self, shape: tuple[int, ...]) -> tuple[Shares, Shares]:
        a = self._random(shape)
        return share(a, self.parties, self._rng), share(a * a, self.parties, self._rng)

    def truncation_pair(self, shape: tuple[int, ...], bits: int) -> tuple[Shares, Shares]:
        r = self._random(shape)
        return share(r, self.parties, self._rng), share(r >> bits, self.parties, self._rng)
