"""Aggregation strategies: client sampling and combining client models.

FedAvg is Algorithm 1 of McMahan et al., *Communication-Efficient Learning of
Deep Networks from Decentralized Data*, AISTATS 2017: each round a fraction C of
the K clients is sampled, each trains locally from the global model, and the new
global model is the average of their models weighted by local sample counts.

Structured like Flower's ``strategy/aggregate.py``: the arithmetic lives in the
pure function :func:`weighted_average`; a :class:`Strategy` holds the policy, and
later strategies (robust aggregators, differential privacy) subclass it and
override only :meth:`Strategy.aggregate`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from fl.errors import ConfigError

__all__ = ["ClientUpdate", "FedAvg", "Strategy", "weighted_average"]


def _check_weights(weights: Sequence[float]) -> float:
    """Validate aggregation weights and return their sum."""
    bad = [w for w in weights if not (math.isfinite(w) and w >= 0)]
    if bad:
        raise ConfigError(f"aggregation weights must be finite and >= 0, got {list(weights)}")
    total = float(sum(weights))
    if total <= 0:
        raise ConfigError(f"aggregation weights must have a positive sum, got {list(weights)}")
    return total


def _check_same_layout(states: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """Every state must have the first state's keys, shapes and dtypes."""
    first = states[0]
    for i, state in enumerate(states[1:], start=1):
        if set(state) != set(first):
            diff = sorted(set(state) ^ set(first))
            raise ConfigError(f"state {i} has different keys than state 0: {diff}")
        for key, ref in first.items():
            t = state[key]
            if t.shape != ref.shape or t.dtype != ref.dtype:
                raise ConfigError(
                    f"state {i} {key!r} is {tuple(t.shape)} {t.dtype}, "
                    f"state 0 has {tuple(ref.shape)} {ref.dtype}"
                )


def weighted_average(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Σᵢ wᵢ·stateᵢ / Σᵢ wᵢ, key by key.

    Accumulates in float64 (averaging many float32 models in float32 loses low
    bits and makes the result depend on client order) and casts back to each
    tensor's dtype. Non-floating tensors (counters such as BatchNorm's
    ``num_batches_tracked``) cannot be averaged: they are taken from the first
    state if all states agree, else ConfigError.
    """
    if len(states) == 0 or len(states) != len(weights):
        raise ConfigError(
            f"need >= 1 state and one weight per state, got {len(states)} states "
            f"and {len(weights)} weights"
        )
    total = _check_weights(weights)
    _check_same_layout(states)
    result: dict[str, torch.Tensor] = {}
    for key, ref in states[0].items():
        if not ref.is_floating_point():
            if any(not torch.equal(s[key], ref) for s in states[1:]):
                raise ConfigError(f"non-floating tensor {key!r} differs between states")
            result[key] = ref.clone()
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for state, w in zip(states, weights, strict=True):
            acc.add_(state[key].to(torch.float64), alpha=float(w))
        result[key] = acc.div_(total).to(ref.dtype)
    return result


@dataclass(frozen=True)
class ClientUpdate:
    """One client's result of a round: its trained state and how much data produced it."""

    client_id: str
    state: Mapping[str, torch.Tensor]
    num_samples: int
    train_loss: float


class Strategy(ABC):
    """How a round picks its clients and combines their updates."""

    name: ClassVar[str]

    def sample_clients(
        self, client_ids: Sequence[str], fraction: float, generator: torch.Generator
    ) -> list[str]:
        """Sample m = max(round(C·K), 1) of the K clients without replacement (McMahan et al.).

        Returned in the order of ``client_ids`` (not sampling order) so that the
        order in which clients train, and hence the run, is deterministic. The
        generator is advanced even when C = 1 so that later draws do not depend
        on C.
        """
        if not (0 < fraction <= 1):
            raise ConfigError(f"client fraction must be in (0, 1], got {fraction}")
        k = len(client_ids)
        if k == 0:
            raise ConfigError("no clients to sample from")
        if len(set(client_ids)) != k:
            raise ConfigError(f"duplicate client ids in {list(client_ids)}")
        m = max(round(fraction * k), 1)
        chosen = torch.randperm(k, generator=generator)[:m].sort().values
        return [client_ids[int(i)] for i in chosen]

    @abstractmethod
    def aggregate(
        self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        """The new global state from this round's client updates."""


class FedAvg(Strategy):
    """Federated Averaging (McMahan et al. 2017): average weighted by client sample count."""

    name: ClassVar[str] = "fedavg"

    def aggregate(
        self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        """Weighted average of the clients' states.

        ``global_state`` is unused by FedAvg; it is part of the interface because
        robust and differentially private strategies work on updates relative to
        it (clipping ``state - global_state``, server learning rates, ...).
        """
        if not updates:
            raise ConfigError("FedAvg needs at least one client update")
        return weighted_average([u.state for u in updates], [float(u.num_samples) for u in updates])
