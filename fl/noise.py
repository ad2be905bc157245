"""Where differential-privacy randomness comes from: a CSPRNG unless a simulation asks otherwise.

DP noise only protects anyone if nobody who reads the run can reproduce it.
Noise from ``torch.Generator().manual_seed(seed)`` with the seed in MLflow can
be regenerated and subtracted from the released model, and Poisson batches or
client cohorts drawn from such a generator are known to that reader, which
voids the amplification by sampling the accountant counts on. So every random
choice a DP mechanism makes — the Gaussian noise, DP-SGD's Poisson batches,
DP-FedAvg's client cohort — goes through a :class:`NoiseSource`:

- :class:`SecureNoise` (the default): a ChaCha20 keystream (the
  ``cryptography`` package) keyed from ``os.urandom`` and re-keyed every GiB;
  the key is never logged nor returned, so nothing a run records lets anyone
  regenerate its noise. It is the construction of :class:`mpc.random.SecureRandom`,
  written here with ``update_into`` (no copy of the keystream) because ``fl``
  and ``mpc`` are sibling libraries that do not import each other.
- :class:`SeededNoise`: a seeded ``torch.Generator``, for reproducible
  simulations only (``--dp-noise-seed``). A run that uses it is *not* private.

Gaussian samples come from the Box–Muller transform of 53-bit uniforms, in
float64, cast to the requested dtype at the end: |z| ≤ √(2·53·ln 2) ≈ 8.6, so
the truncated tail has probability < 10⁻¹⁷ per coordinate. What is not
addressed: floating-point attacks on the sampler's low-order bits (Mironov
2012; Jin et al. 2022), which need a discrete Gaussian to rule out.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fl.errors import ConfigError

__all__ = ["NoiseSource", "SecureNoise", "SeededNoise", "noise_source"]

_KEY_BYTES = 32
_REKEY_BYTES = 1 << 30  # well inside ChaCha20's 2^32-block counter
_MANTISSA = (1 << 53) - 1


class NoiseSource(ABC):
    """The random draws DP mechanisms make; ``private`` says whether a reader could redo them."""

    private: ClassVar[bool]

    @abstractmethod
    def uniform(self, count: int) -> torch.Tensor:
        """``count`` float64 samples of U[0, 1), each a multiple of 2⁻⁵³."""

    @abstractmethod
    def normal(self, count: int, std: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``count`` samples of N(0, std²) as a 1-D tensor of ``dtype``."""

    def choose(self, population: int, size: int) -> torch.Tensor:
        """``size`` distinct indices of ``range(population)``, uniformly, sorted ascending.

        The order of ``population`` uniform keys is a uniform random permutation
        (ties have probability < population²·2⁻⁵⁴); its first ``size`` entries are
        a uniform sample without replacement.
        """
        if not 0 <= size <= population:
            raise ConfigError(f"cannot choose {size} of {population}")
        return torch.argsort(self.uniform(population))[:size].sort().values

    def poisson_mask(self, count: int, rate: float) -> torch.Tensor:
        """Each of ``count`` items independently with probability ``rate`` (bool mask)."""
        return self.uniform(count) < rate


class SecureNoise(NoiseSource):
    """Draws from a ChaCha20 keystream keyed from the operating system's CSPRNG."""

    private = True

    def __init__(self) -> None:
        self._zeros = b""
        self._rekey()

    def _rekey(self) -> None:
        key = os.urandom(_KEY_BYTES)
        self._stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
        self._emitted = 0

    def _words(self, count: int) -> torch.Tensor:
        """``count`` uniformly random int64 words."""
        size = 8 * count
        if self._emitted + size > _REKEY_BYTES:
            self._rekey()
        self._emitted += size
        if len(self._zeros) < size:
            self._zeros = bytes(size)
        out = bytearray(size)
        # ChaCha20 of zeros is the keystream; update_into writes it in place.
        self._stream.update_into(memoryview(self._zeros)[:size], out)
        return torch.frombuffer(out, dtype=torch.int64, count=count)

    def uniform(self, count: int) -> torch.Tensor:
        if count == 0:  # torch.frombuffer refuses an empty buffer
            return torch.zeros(0, dtype=torch.float64)
        words = self._words(count)
        return (words & _MANTISSA).to(torch.float64).mul_(2.0**-53)

    def normal(self, count: int, std: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        _check_std(count, std)
        if std == 0 or count == 0:
            return torch.zeros(count, dtype=dtype)
        half = (count + 1) // 2
        u = self.uniform(2 * half)
        radius = u[:half].neg_().add_(1.0).log_().mul_(-2.0).sqrt_()  # 1 − u ∈ (0, 1]
        angle = u[half:].mul_(2 * math.pi)
        out = torch.empty(2 * half, dtype=torch.float64)
        torch.mul(radius, torch.cos(angle), out=out[:half])
        torch.mul(radius, torch.sin(angle), out=out[half:])
        return out[:count].mul_(std).to(dtype)


class SeededNoise(NoiseSource):
    """Draws from ``torch.Generator().manual_seed(seed)``: reproducible, hence not private."""

    private = False

    def __init__(self, seed: int) -> None:
        if not 0 <= seed < 2**63:
            raise ConfigError(f"noise seed must be in [0, 2**63), got {seed}")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def uniform(self, count: int) -> torch.Tensor:
        return torch.rand(count, generator=self.generator, dtype=torch.float64)

    def normal(self, count: int, std: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        _check_std(count, std)
        if std == 0 or count == 0:
            return torch.zeros(count, dtype=dtype)
        return torch.normal(0.0, std, size=(count,), generator=self.generator, dtype=dtype)


def noise_source(seed: int | None) -> NoiseSource:
    """:class:`SecureNoise` for ``None`` (the default), else a non-private :class:`SeededNoise`."""
    return SecureNoise() if seed is None else SeededNoise(seed)


def _check_std(count: int, std: float) -> None:
    if count < 0 or not (math.isfinite(std) and std >= 0):
        raise ConfigError(f"need count >= 0 and std >= 0, got {count} and {std}")
