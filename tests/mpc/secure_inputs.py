"""Client states and their secure-aggregation inputs, shared by the aggregation tests."""

from __future__ import annotations

from typing import Any

import torch

from fl.models import build_model, get_state
from mpc.secure_aggregation import SecureInput


def model_states(count: int, model: str = "mlp") -> list[dict[str, torch.Tensor]]:
    """``count`` different states of ``model`` (seeds 0, 1, ...)."""
    return [get_state(build_model(model, seed=i)) for i in range(count)]


def secure_inputs(
    workers: list[Any], states: list[dict[str, torch.Tensor]], weights: list[int]
) -> list[SecureInput]:
    """Each state sent to its worker, as that client's input with its weight."""
    return [SecureInput(w, w.send(s), n) for w, s, n in zip(workers, states, weights, strict=True)]
