"""Client updates as one matrix: the common currency of robust aggregation, attacks and DP.

Robust aggregators (``fl.robust``), simulated attacks (``fl.attacks``) and
client-level DP (``fl.privacy``) all work on updates Δᵢ = stateᵢ − global, not
on states: medians, distances, clipping norms and noise are about how far a
client moved the model. :func:`stack_updates` lays the round's updates out as
an (n, d) float64 matrix (row i = client i, every floating tensor flattened in
the global state's key order); :func:`unstack_update` turns one (d,) row back
into a state. :func:`clip_to_reference` bounds one client's move without the
matrix: the worker's own clip before an update leaves it, and the coordinator's
clip of each update as a streamed round folds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from fl.errors import ConfigError

__all__ = ["clip_to_reference", "floating_keys", "stack_updates", "unstack_update", "update_norm"]

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


def update_norm(state: StateDict, reference: StateDict) -> float:
    """‖state − reference‖₂ over ``reference``'s floating tensors, in float64 (NaN or
    inf when the move is not finite)."""
    deltas = [
        (state[key].double() - ref.double()).reshape(-1)
        for key, ref in reference.items()
        if ref.is_floating_point()
    ]
    return float(torch.linalg.vector_norm(torch.cat(deltas))) if deltas else 0.0


def clip_to_reference(
    state: StateDict, reference: StateDict, clip: float
) -> dict[str, torch.Tensor] | None:
    """``state`` moved back onto the L2 ball of radius ``clip`` around ``reference``,
    or None when it is inside already.

    The move is scaled in float64 and cast back to each tensor's dtype. A move
    that is not finite (training diverged, or a hostile client) becomes no move
    at all — ``reference``'s tensors — so that the bound holds whatever happened
    and no NaN reaches a sum. Tensors ``reference`` has no floating value for
    are ``state``'s own.
    """
    norm = update_norm(state, reference)
    if norm <= clip:
        return None
    clipped = dict(state)
    for key, ref in reference.items():
        if not ref.is_floating_point():
            continue
        if not math.isfinite(norm):  # NaN · 0 is NaN: the reference instead
            clipped[key] = ref.detach().clone()
            continue
        moved = ref.double() + (state[key].double() - ref.double()) * (clip / norm)
        clipped[key] = moved.to(ref.dtype)
    return clipped
