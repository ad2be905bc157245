"""Model states as flat vectors and back: the unit secure aggregation shares.

A client shares weight · (its floating tensors, flattened in key order) with
the weight appended; the opened sum is divided by its last element, the total
weight, and cut back into tensors in the same key order — that of the global
state, which comes from the same model as every client's state.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mpc.errors import MPCError

__all__ = ["MAX_VECTOR", "flatten_update", "unflatten_average", "vector_length"]

MAX_VECTOR = 1 << 28  # elements per shared vector: 2 GiB of int64, far above any model here


def flatten_update(state: Mapping[str, torch.Tensor], weight: int) -> torch.Tensor:
    """weight · (every floating tensor of ``state``, flattened in key order) ++ [weight], float64.

    The coordinator unflattens the opened sum with the same key order (that of
    the global state: both come from the same model), and divides by the last
    element, the total weight.
    """
    parts = [
        t.detach().reshape(-1).to(torch.float64) for t in state.values() if t.is_floating_point()
    ]
    flat = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)
    return torch.cat([flat * float(weight), torch.tensor([float(weight)], dtype=torch.float64)])


def vector_length(state: Mapping[str, torch.Tensor]) -> int:
    """Length of :func:`flatten_update`'s vector for states shaped like ``state``."""
    return sum(t.numel() for t in state.values() if t.is_floating_point()) + 1


def unflatten_average(
    total: torch.Tensor, template: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], float]:
    weight = float(total[-1])
    if not weight > 0:
        raise MPCError(f"opened total weight is {weight}: the shares do not add up")
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
