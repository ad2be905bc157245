"""Cryptographically secure randomness for secret sharing.

Shares must be uniformly random in Z/2^64 and unpredictable to every other
party: PySyft 0.2 drew them from torch's default (Mersenne-Twister-like)
generator, which is neither. Here a ChaCha20 keystream (the ``cryptography``
package) keyed from ``os.urandom`` produces the bytes, faster than
``os.urandom`` itself (docs/mpc-and-he.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from mpc.errors import MPCError

__all__ = ["SEED_BYTES", "SecureRandom", "expand"]

_KEY_BYTES = 32
_NONCE_BYTES = 16
SEED_BYTES = 32  # a seed that expand() stretches into many ring elements


class SecureRandom:
    """A ChaCha20 keystream used as a CSPRNG; one instance per party or dealer.

    ``key`` exists for tests that need a reproducible stream; production code
    leaves it out so the key comes from the operating system.
    """

    def __init__(self, key: bytes | None = None) -> None:
        key = os.urandom(_KEY_BYTES) if key is None else key
        if len(key) != _KEY_BYTES:
            raise MPCError(f"ChaCha20 key must be {_KEY_BYTES} bytes, got {len(key)}")
        cipher = Cipher(algorithms.ChaCha20(key, bytes(_NONCE_BYTES)), mode=None)
        self._stream = cipher.encryptor()

    def random_bytes(self, count: int) -> bytes:
        """``count`` bytes of keystream (ChaCha20 applied to zeros)."""
        return self._stream.update(bytes(count))

    def ring_elements(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform elements of Z/2^64 as an int64 tensor of ``shape``."""
        count = math.prod(shape)
        if count == 0:  # torch.frombuffer refuses an empty buffer
            return torch.zeros(tuple(shape), dtype=torch.int64)
        data = bytearray(self.random_bytes(8 * count))
        return torch.frombuffer(data, dtype=torch.int64, count=count).reshape(tuple(shape))


_zeros = bytes(0)  # a calloc'd zero buffer (lazily mapped pages), grown on demand


def _zero_source(nbytes: int) -> memoryview:
    global _zeros
    if len(_zeros) < nbytes:
        _zeros = bytes(nbytes)
    return memoryview(_zeros)[:nbytes]


def expand(seed: bytes, stream: int, shape: Sequence[int]) -> torch.Tensor:
    """Stream ``stream`` of the ChaCha20 keystream keyed by ``seed``, as uniform int64s.

    The 16-byte ChaCha20 nonce is (block counter 0 ‖ stream id), so streams of one
    seed are independent. The keystream is written straight into the tensor, not
    into bytes first and then a copy, as ``SecureRandom.ring_elements`` does.
    """
    if len(seed) != SEED_BYTES:
        raise MPCError(f"a seed has {SEED_BYTES} bytes, got {len(seed)}")
    if not 0 <= stream < 2**64:
        raise MPCError(f"stream id must be in [0, 2**64), got {stream}")
    out = torch.empty(tuple(shape), dtype=torch.int64)
    if out.numel():
        nonce = bytes(4) + stream.to_bytes(8, "little") + bytes(4)
        encryptor = Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor()
        target = memoryview(out.numpy()).cast("B")  # type: ignore[arg-type]
        encryptor.update_into(_zero_source(8 * out.numel()), target)
    return out
