"""FedProx: FedAvg whose clients keep near the round's model.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, *Federated Optimization in
Heterogeneous Networks*, MLSys 2020, Algorithm 2: client k minimises
h_k(w; w_t) = F_k(w) + (μ/2)·‖w − w_t‖² from w_t (the proximal term is what
keeps heterogeneous clients' updates from drifting apart), and the server
averages the results as FedAvg does. The term lives in the clients' local SGD
(``TrainConfig.prox_mu``, ``fl.training``); this strategy only asks for it
(``train_options``), so it runs wherever FedAvg does, secure aggregation
included. μ = 0 is FedAvg.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

from fl.aggregation import FedAvg
from fl.errors import ConfigError

__all__ = ["FedProx"]


class FedProx(FedAvg):
    """FedAvg with the clients' proximal term μ (Li et al. 2020; μ = 0.01 is one of
    the paper's grid {0.001, 0.01, 0.1, 1})."""

    name: ClassVar[str] = "fedprox"

    def __init__(self, *, mu: float = 0.01) -> None:
        if not (math.isfinite(mu) and mu >= 0):
            raise ConfigError(f"FedProx's mu must be >= 0, got {mu}")
        self.mu = mu

    @property
    def train_options(self) -> Mapping[str, float]:
        return {"prox_mu": self.mu}
