"""What a round — or one batch of its clients — hands back to the coordinator."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fl.aggregation import ClientUpdate, RoundAggregate
from fl.weighted_sum import WeightedSum
from workers.pointer import Pointer

__all__ = ["RoundOutcome", "StateDict"]

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RoundOutcome:
    """What one round of local training returns to the coordinator."""

    # Every client that delivered, for the round's metrics; a folded or sealed
    # update carries no state.
    updates: list[ClientUpdate]
    bytes_sent: int
    bytes_received: int
    # Clients that were sampled but did not deliver an update (websocket levels).
    dropped: tuple[int, ...] = ()
    comm_seconds: float = 0.0
    # Seconds the clients spent in their local training loops (summed).
    compute_seconds: float = 0.0
    # A batch that folded its updates (the strategy's MeanFold) as they arrived:
    # their sum (``flows.rounds.batches``).
    partial: WeightedSum | None = None
    # Secure aggregation: the trained states stay on the workers (one pointer per
    # update, same order) until the protocol opens their sum (``flows.secure``).
    remote_states: tuple[Pointer, ...] = ()
    # A whole round's: what makes the next global state of it (fl.aggregation).
    aggregate: RoundAggregate | None = None
    metrics: dict[str, float] = field(default_factory=dict)
