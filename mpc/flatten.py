"""Model states as flat vectors and back: the unit secure aggregation shares.

A client shares weight · (its floating tensors, flattened in key order) with
the weight appended; the opened sum is divided by its last element, the total
weight, and cut back into tensors in the same key order — that of the global
state, which comes from the same model as every client's state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mpc.errors import MPCError

__all__ = ["MAX_VECTOR", "flatten_update", "float_keys", "unflatten_average", "vector_length"]

MAX_VECTOR = 1 << 25  # elements per shared vector: 256 MiB of int64, 20× the McMahan CNN


def float_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of ``state``'s floating tensors, in order: the layout of the vector."""
    return [key for key, tensor in state.items() if tensor.is_floating_point()]


def flatten_update(
    state: Mapping[str, torch.Tensor], weight: int, keys: Sequence[str]
) -> torch.Tensor:
    """weight · (the tensors ``keys`` of ``state``, flattened in that order) ++ [weight], float64.

    ``keys`` comes from the coordinator's global state (:func:`float_keys`), so
    every client lays its vector out exactly as the coordinator unflattens the
    sum; a state with other floating tensors is refused rather than misread.
    """
    if set(keys) != set(float_keys(state)) or len(set(keys)) != len(keys):
        raise MPCError("the trained state's tensors do not match the global model's")
    parts = [state[key].detach().reshape(-1).to(torch.float64) for key in keys]
    flat = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)
    return torch.cat([flat * float(weight), torch.tensor([float(weight)], dtype=torch.float64)])


def vector_length(state: Mapping[str, torch.Tensor]) -> int:
    """Length of :func:`flatten_update`'s vector for states shaped like ``state``."""
    return sum(t.numel() for t in state.values() if t.is_floating_point()) + 1


def unflatten_average(
    total: torch.Tensor, template: Mapping[str, torch.Tensor], expected_weight: float
) -> tuple[dict[str, torch.Tensor], float]:
    """The average state from an opened sum Σ n_c·w_c ++ [Σ n_c].

    The coordinator knows each client's sample count (from its training reply),
    so a total weight other than their sum means the opening is garbled — a
    wrapped-around sum or a corrupted share — and nothing is returned.
    """
    weight = float(total[-1])
    if abs(weight - expected_weight) > 1e-3:
        raise MPCError(
            f"opened total weight is {weight}, the clients trained on {expected_weight:g} "
            "samples: the shares do not add up (corrupted or overflowed); no model is written"
        )
    average = total[:-1] / weight
    state: dict[str, torch.Tensor] = {}
    offset = 0
    for name, ref in template.items():
        if not ref.is_floating_point():
            state[name] = ref.clone()  # counters are not averaged (as in weighted_average)
            continue
        chunk = average[offset : offset + ref.numel()]
        state[name] = chunk.reshape(ref.shape).to(ref.dtype)
        offset += ref.numel()
    return state, weight
