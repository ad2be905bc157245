"""Adaptive server optimisers: the round's mean move is a pseudo-gradient the server steps on.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, *Adaptive
Federated Optimization*, ICLR 2021, Algorithm 2 (FedOpt). Each round the
clients train from x_t as in FedAvg; with Δ_t the average of their moves
(x_i − x_t), the server keeps Adam's moments per coordinate and steps:

    m_t = β₁·m_{t−1} + (1 − β₁)·Δ_t
    v_t = β₂·v_{t−1} + (1 − β₂)·Δ_t²
    x_{t+1} = x_t + η·m_t / (√v_t + τ)

with m_{−1} = 0 and v_{−1} = τ² (the paper asks v_{−1} ≥ τ²), and no bias
correction, as in the paper. FedAvg is the case η = 1, β₁ = β₂ = 0 without
the division.

The mean Δ_t is FedAvg's weighted one, so the strategy folds updates as they
arrive (:class:`~fl.aggregation.MeanFold`) and does its work in
:meth:`FedAdam.finish_mean`: the same step on a folded mean, on one held round's
updates (:meth:`~fl.aggregation.FedAvg.aggregate`) and on a mean opened by
secure aggregation. This module is the worked example of adding an aggregator
(docs/design.md, "Aggregation").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch

from fl.aggregation import FedAvg, StateDict
from fl.errors import ConfigError
from fl.updates import floating_keys

__all__ = ["FedAdam"]


class FedAdam(FedAvg):
    """FedAdam (Reddi et al. 2021): an Adam step on the clients' weighted mean move.

    Defaults: β₁ = 0.9, β₂ = 0.99 and τ = 10⁻³ are the paper's; the server
    learning rate η has no universal value (the paper tunes it per task over
    10^{−3}…10^{0}), 10⁻² is a cautious start for the CNNs here.
    """

    name: ClassVar[str] = "fedadam"

    def __init__(
        self, *, eta: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        for label, value in (("eta", eta), ("tau", tau)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"FedAdam's {label} must be > 0, got {value}")
        for label, value in (("beta1", beta1), ("beta2", beta2)):
            if not (math.isfinite(value) and 0.0 <= value < 1.0):
                raise ConfigError(f"FedAdam's {label} must be in [0, 1), got {value}")
        self.eta, self.beta1, self.beta2, self.tau = eta, beta1, beta2, tau
        # Per floating key, the server's first and second moments (float64), made
        # in the first round from the model's shapes.
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def finish_mean(
        self, global_state: Mapping[str, torch.Tensor], mean: StateDict, count: int
    ) -> StateDict:
        """x + η·m/(√v + τ) for the pseudo-gradient Δ = mean − x; other tensors from the mean."""
        result = {key: tensor.clone() for key, tensor in mean.items()}
        for key in floating_keys(global_state):
            x = global_state[key].detach().to(torch.float64)
            delta = mean[key].detach().to(torch.float64) - x
            if key not in self.m:
                self.m[key] = torch.zeros_like(x)
                self.v[key] = torch.full_like(x, self.tau**2)
            m = self.m[key].mul_(self.beta1).add_(delta, alpha=1 - self.beta1)
            v = self.v[key].mul_(self.beta2).addcmul_(delta, delta, value=1 - self.beta2)
            step = m / (v.sqrt() + self.tau)
            result[key] = (x + self.eta * step).to(global_state[key].dtype)
        return result
