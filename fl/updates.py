"""Client updates as one matrix: the common currency of robust aggregation, attacks and DP.

Robust aggregators (``fl.robust``), simulated attacks (``fl.attacks``) and
client-level DP (``fl.privacy``) all work on updates Δᵢ = stateᵢ − global, not
on states: medians, distances, clipping norms and noise are about how far a
client moved the model. :func:`stack_updates` lays the round's updates out as
an (n, d) float64 matrix (row i = client i, every floating tensor flattened in
the global state's key order); :func:`unstack_update` turns one (d,) row back
into a state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fl.errors import ConfigError

__all__ = ["floating_keys", "stack_updates", "unstack_update"]

StateDict = Mapping[str, torch.Tensor]


def floating_keys(global_state: StateDict) -> tuple[str, ...]:
    """The keys whose tensors are parameters (floating); counters are not updates."""
    return tuple(k for k, t in global_state.items() if t.is_floating_point())


def stack_updates(
    global_state: StateDict, states: Sequence[StateDict]
) -> tuple[tuple[str, ...], torch.Tensor]:
    """The floating keys of ``global_state`` and the (n, d) float64 matrix of stateᵢ − global.

    Row i is state i's update with every floating tensor flattened and
    concatenated in ``global_state``'s key order (d = their total element
    count). Non-floating tensors (BatchNorm counters) are not updates and are
    left out. Differences are taken in float64 so that small updates of large
    float32 weights keep their low bits.
    """
    keys = floating_keys(global_state)
    d = sum(global_state[k].numel() for k in keys)
    matrix = torch.empty((len(states), d), dtype=torch.float64)
    for i, state in enumerate(states):
        col = 0
        for key in keys:
            ref = global_state[key]
            t = state.get(key)
            if t is None or t.shape != ref.shape:
                got = "missing" if t is None else tuple(t.shape)
                raise ConfigError(f"state {i} {key!r} is {got}, global has {tuple(ref.shape)}")
            diff = t.detach().to(torch.float64) - ref.detach().to(torch.float64)
            matrix[i, col : col + ref.numel()] = diff.reshape(-1)
            col += ref.numel()
    return keys, matrix


def unstack_update(
    global_state: StateDict,
    keys: Sequence[str],
    row: torch.Tensor,
    others: StateDict | None = None,
) -> dict[str, torch.Tensor]:
    """The state global + ``row``: inverse of one row of :func:`stack_updates`.

    Floating tensors in ``keys`` get their slice of ``row`` added in float64 and
    are cast back to their own dtype and shape; every other tensor is a clone
    of ``others``' (a client state, whose counters moved on in training) or,
    without it, of the global one. Keys come in ``global_state``'s order.
    """
    d = sum(global_state[k].numel() for k in keys)
    if row.shape != (d,):
        raise ConfigError(f"update row has shape {tuple(row.shape)}, expected ({d},)")
    pieces = dict(zip(keys, torch.split(row, [global_state[k].numel() for k in keys]), strict=True))
    source = global_state if others is None else others
    result: dict[str, torch.Tensor] = {}
    for key, ref in global_state.items():
        if key in pieces:
            new = ref.detach().to(torch.float64) + pieces[key].reshape(ref.shape)
            result[key] = new.to(ref.dtype)
        else:
            result[key] = source[key].detach().clone()
    return result
