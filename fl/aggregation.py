"""Aggregation strategies: client sampling, and how a round's updates become the next model.

FedAvg is Algorithm 1 of McMahan et al., *Communication-Efficient Learning of
Deep Networks from Decentralized Data*, AISTATS 2017: each round a fraction C of
the K clients is sampled, each trains locally from the global model, and the new
global model is the average of their models weighted by local sample counts.

Structured like Flower's ``strategy/aggregate.py``: the arithmetic lives in pure
functions and :class:`WeightedSum`; a :class:`Strategy` holds the policy. A round
asks its strategy for a :class:`RoundAggregate` (:meth:`Strategy.start_round`),
hands it the clients' results as batches report, and finishes it once:

- a strategy with a :class:`MeanFold` (FedAvg, DP-FedAvg with a fixed clip) folds
  each update into a running sum as it arrives (:class:`FoldedMean`) and
  finishes the mean in :meth:`Strategy.finish_mean` — where DP-FedAvg adds its
  noise, to a folded mean as to one opened by secure aggregation;
- any other strategy holds the updates (:class:`HeldUpdates`) and computes the
  new state in :meth:`Strategy.aggregate` (median, Krum, adaptive clipping...).

A new aggregator is one subclass of :class:`Strategy` (docs/design.md, "Aggregation").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from fl.errors import ConfigError
from fl.updates import clip_to_reference
from fl.weighted_sum import WeightedSum, weighted_average

__all__ = [
    "ClientUpdate",
    "FedAvg",
    "Finished",
    "FoldedMean",
    "HeldUpdates",
    "MeanFold",
    "RoundAggregate",
    "Strategy",
]

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ClientUpdate:
    """One client's result of a round: its trained state and how much data produced it."""

    client_id: str
    state: Mapping[str, torch.Tensor]
    num_samples: int
    train_loss: float


@dataclass(frozen=True)
class MeanFold:
    """How a strategy that averages weighs and bounds an update before folding it.

    Plain data, so that a batch of clients trained in another process (Dask)
    folds exactly as one trained here. FedAvg weighs a client by its sample
    count. DP-FedAvg (``clip`` set) weighs every client 1 and clips its move
    around the round's global state on the coordinator too — the workers clip
    already, but a client that skipped it must gain nothing — and keeps the
    mean in float64, so its noise goes on before anything is rounded.
    """

    clip: float | None = None

    def weighed(
        self, update: ClientUpdate, global_state: Mapping[str, torch.Tensor]
    ) -> tuple[Mapping[str, torch.Tensor], float]:
        """The ``(state, weight)`` to fold for ``update``."""
        if self.clip is None:
            return update.state, float(update.num_samples)
        return clip_to_reference(update.state, global_state, self.clip) or update.state, 1.0

    def mean_dtypes(self, global_state: Mapping[str, torch.Tensor]) -> dict[str, torch.dtype]:
        """Per key, the dtype the round's mean is handed on in."""
        wide = self.clip is not None
        return {
            key: torch.float64 if wide and t.is_floating_point() else t.dtype
            for key, t in global_state.items()
        }


class Strategy(ABC):
    """How a round picks its clients and combines their updates."""

    name: ClassVar[str]
    # Set when the strategy's aggregate is a mean a round can fold update by
    # update as they arrive instead of holding them all: FedAvg's weighted mean,
    # or DP-FedAvg's clipped, unweighted one (noised in finish_mean).
    fold: MeanFold | None = None

    @property
    def train_options(self) -> Mapping[str, float]:
        """Fields of the clients' ``TrainConfig`` this strategy sets (FedProx's
        ``prox_mu``): they reach every client of the FedAvg levels. None by default."""
        return {}

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

    def start_round(
        self, global_state: Mapping[str, torch.Tensor], *, folded: bool
    ) -> RoundAggregate:
        """This round's aggregate: a running mean if ``folded`` (the batches fold
        with :attr:`fold`), else one that holds every update."""
        if folded:
            if self.fold is None:
                raise ConfigError(f"aggregator {self.name!r} needs every update: it cannot fold")
            return FoldedMean(self, global_state)
        return HeldUpdates(self, global_state)

    @abstractmethod
    def aggregate(
        self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        """The new global state from this round's client updates."""

    def finish_mean(
        self, global_state: Mapping[str, torch.Tensor], mean: StateDict, count: int
    ) -> StateDict:
        """The new global state from the mean of ``count`` updates, folded with
        :attr:`fold` or opened by secure aggregation: the mean itself, unless the
        strategy post-processes it (DP-FedAvg's noise). Only averaging strategies can."""
        raise ConfigError(f"aggregator {self.name!r} does not average: it needs every update")


class FedAvg(Strategy):
    """Federated Averaging (McMahan et al. 2017): average weighted by client sample count."""

    name: ClassVar[str] = "fedavg"
    fold: MeanFold | None = MeanFold()

    def aggregate(
        self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        """Weighted average of the clients' states, finished by :meth:`finish_mean` — so a
        subclass that post-processes the mean (``fl.fedopt``) does it for held
        rounds too. FedAvg's own finish uses no ``global_state``; others work on
        updates relative to it (clipping ``state - global_state``, server steps).
        """
        if not updates:
            raise ConfigError(f"{self.name} needs at least one client update")
        states, weights = [u.state for u in updates], [float(u.num_samples) for u in updates]
        return self.finish_mean(global_state, weighted_average(states, weights), len(updates))

    def finish_mean(
        self, global_state: Mapping[str, torch.Tensor], mean: StateDict, count: int
    ) -> StateDict:
        """The mean is the new global state."""
        return mean


class RoundAggregate(ABC):
    """How one round's client results become the next global state.

    Batches of clients report as they finish (:meth:`take`, in batch order, so
    the result does not depend on which finished first); :meth:`finish` is
    called once, after the last.
    """

    @abstractmethod
    def take(self, updates: Sequence[ClientUpdate], folded: WeightedSum | None) -> None:
        """A batch's results: its updates, and the sum it folded them into if it did."""

    @abstractmethod
    def finish(self) -> StateDict:
        """The next global state."""


class HeldUpdates(RoundAggregate):
    """Every update, held until the strategy aggregates them all at once."""

    def __init__(self, strategy: Strategy, global_state: Mapping[str, torch.Tensor]) -> None:
        self.strategy, self.global_state = strategy, global_state
        self.updates: list[ClientUpdate] = []

    def take(self, updates: Sequence[ClientUpdate], folded: WeightedSum | None) -> None:
        if folded is not None:
            raise ConfigError("a batch folded its updates, but the round holds them")
        self.updates.extend(updates)

    def finish(self) -> StateDict:
        updates, self.updates = self.updates, []  # freed now (see FoldedMean.finish)
        return self.strategy.aggregate(self.global_state, updates)


class FoldedMean(RoundAggregate):
    """The batches' folded sums, merged in batch order, averaged and finished by the strategy.

    The sums are the round's own, used once: the first batch's becomes the
    total and the others are merged into it in place and emptied, which spares
    a model-sized float64 copy on the round's critical path and frees each
    batch's sum as soon as it is merged.
    """

    def __init__(self, strategy: Strategy, global_state: Mapping[str, torch.Tensor]) -> None:
        assert strategy.fold is not None
        self.strategy, self.fold, self.global_state = strategy, strategy.fold, global_state
        self.total: WeightedSum | None = None

    def take(self, updates: Sequence[ClientUpdate], folded: WeightedSum | None) -> None:
        if folded is None:
            raise ConfigError("a batch held its updates, but the round folds them")
        if self.total is None:
            self.total = folded
        else:
            self.total.merge(folded)
            folded.sums.clear()

    def finish(self) -> StateDict:
        if self.total is None:
            raise ConfigError("no batch reported to the round, or it was finished already")
        total, self.total = self.total, None
        mean = total.average(self.fold.mean_dtypes(self.global_state))
        # Freed now, not when the round's objects are: an orchestrator may hold the
        # aggregate (a task's parameter) in reference cycles until a full collection.
        total.sums.clear()
        return self.strategy.finish_mean(self.global_state, mean, total.count)


class Finished(RoundAggregate):
    """A round that produced the next state itself: the centralised baseline, the
    model passed from worker to worker, a sum opened by secure aggregation."""

    def __init__(self, state: StateDict) -> None:
        self.state = state

    def take(self, updates: Sequence[ClientUpdate], folded: WeightedSum | None) -> None:
        raise ConfigError("the round has its next state already")

    def finish(self) -> StateDict:
        return self.state
