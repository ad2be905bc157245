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

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from mpc.errors import MPCError

__all__ = ["SecureRandom"]

_KEY_BYTES = 32
_NONCE_BYTES = 16


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
