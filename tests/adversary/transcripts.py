"""The cheating coordinator's tools: a tap on every frame it relays, and a search of them.

``recover`` looks for a value's fixed-point encoding as any sum of up to three
ring tensors of its shape that the coordinator saw, read from bytes it saw, or
expanded from any 32 bytes it saw as a seed — what it could compute from an
unencrypted relay or a leaked seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from mpc.random import SEED_BYTES, expand
from workers.codec import decode_frame
from workers.virtual import VirtualWorker

__all__ = ["TappedWorker", "recover", "ring_candidates"]


class TappedWorker(VirtualWorker):
    """A worker whose every request and reply the coordinator keeps (it relays them)."""

    def __init__(self, worker_id: str, transcript: list[bytes]) -> None:
        super().__init__(worker_id)
        self.transcript = transcript

    def _roundtrip(self, data: bytes) -> bytes | bytearray:
        reply = super()._roundtrip(data)
        self.transcript += [bytes(data), bytes(reply)]
        return reply


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, list):
        for item in value:
            yield from _tensors(item)


def ring_candidates(
    transcript: list[bytes], shape: tuple[int, ...], *, seeds: bool = True
) -> list[torch.Tensor]:
    """Every ring tensor of ``shape`` the coordinator saw, read from the tail of any
    bytes it saw, or (with ``seeds``) expanded from any 32 bytes it saw as a seed,
    streams 0-3 as the parties expand theirs."""
    candidates: list[torch.Tensor] = []
    count = math.prod(shape)
    for frame in transcript:
        _, value = decode_frame(frame)
        for tensor in _tensors(value):
            if tensor.dtype == torch.int64 and tuple(tensor.shape) == shape:
                candidates.append(tensor)
            elif tensor.dtype == torch.uint8 and tensor.ndim == 1:
                raw = tensor.numpy().tobytes()
                if seeds and len(raw) >= SEED_BYTES:
                    candidates += [expand(raw[:SEED_BYTES], s, shape) for s in range(4)]
                if len(raw) % 8 == 0 and len(raw) >= 8 * count:
                    tail = raw[len(raw) - 8 * count :]
                    candidates.append(torch.frombuffer(bytearray(tail), dtype=torch.int64))
    return [c.reshape(shape) for c in candidates]


def recover(
    transcript: list[bytes], shape: tuple[int, ...], target: torch.Tensor
) -> torch.Tensor | None:
    """The coordinator's search: any sum of up to three of the :func:`ring_candidates`
    that equals the owner's encoding ``target``."""
    candidates = ring_candidates(transcript, shape)
    unique = {c.numpy().tobytes(): c for c in candidates}
    pool = list(unique.values())
    if target.numpy().tobytes() in unique:
        return target
    # A sum of two or three equals the target iff the target minus one or two of
    # them is a third: hashed lookups instead of every combination.
    for index, first in enumerate(pool):
        rest = target - first
        if rest.numpy().tobytes() in unique:
            return target
        for second in pool[index:]:
            if (rest - second).numpy().tobytes() in unique:
                return target
    return None
