"""Your own server strategy, as a user writes it outside the package: FedAvg with server momentum.

FedAvgM (Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification", 2019): the server keeps a
velocity v of the clients' mean move Δ_t = mean_t − x_t and steps with it,

    v_t = β·v_{t−1} + Δ_t,    x_{t+1} = x_t + v_t        (v_{−1} = 0)

so β = 0 is FedAvg. Only ``finish_mean`` is overridden: the step then runs
wherever FedAvg's mean is formed — folded as updates arrive, over held
updates, or opened by secure aggregation. Run it with

    .venv/bin/fedsim run --levels 3,4 --strategy examples/custom_strategy.py:FedAvgM:beta=0.5
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from fl.aggregation import FedAvg, StateDict


class FedAvgM(FedAvg):
    """FedAvg whose server step carries momentum ``beta`` (in [0, 1))."""

    name: ClassVar[str] = "fedavgm"

    def __init__(self, beta: float = 0.9) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.velocity: dict[str, torch.Tensor] = {}

    def finish_mean(
        self, global_state: Mapping[str, torch.Tensor], mean: StateDict, count: int
    ) -> StateDict:
        new_state = {}
        for key, current in global_state.items():
            if not current.is_floating_point():  # counters and the like: FedAvg's mean
                new_state[key] = mean[key]
                continue
            move = mean[key].double() - current.double()
            velocity = self.beta * self.velocity.get(key, torch.zeros_like(move)) + move
            self.velocity[key] = velocity
            new_state[key] = (current.double() + velocity).to(current.dtype)
        return new_state
