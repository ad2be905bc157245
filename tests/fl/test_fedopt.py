"""FedAdam against Reddi et al. 2021's update rule, written out by hand on two coordinates."""

from __future__ import annotations

import math

import pytest
import torch

from fl.aggregation import ClientUpdate, FedAvg
from fl.errors import ConfigError
from fl.fedopt import FedAdam
from fl.weighted_sum import WeightedSum

ETA, BETA1, BETA2, TAU = 0.5, 0.9, 0.99, 0.1


def by_hand(x: list[float], deltas: list[list[float]]) -> list[list[float]]:
    """Algorithm 2 of the paper, coordinate by coordinate in plain floats: the
    server's model after each round, given each round's mean move Δ_t."""
    m, v, models = [0.0] * len(x), [TAU**2] * len(x), []
    for delta in deltas:
        for i, d in enumerate(delta):
            m[i] = BETA1 * m[i] + (1 - BETA1) * d
            v[i] = BETA2 * v[i] + (1 - BETA2) * d * d
            x[i] = x[i] + ETA * m[i] / (math.sqrt(v[i]) + TAU)
        models.append(list(x))
    return models


def clients(x: torch.Tensor) -> list[ClientUpdate]:
    """Two clients that move x by fixed amounts, with 1 and 3 samples."""
    moves = [(torch.tensor([1.0, 0.0]), 1), (torch.tensor([0.0, 2.0]), 3)]
    return [
        ClientUpdate(f"c{i}", {"w": x + move, "steps": torch.tensor(7)}, n, 0.0)
        for i, (move, n) in enumerate(moves)
    ]


def test_fedadam_follows_the_papers_rule_folded_held_and_opened() -> None:
    # Prepare: the same two rounds through the three ways a round ends.
    start = {"w": torch.tensor([0.0, 1.0]), "steps": torch.tensor(3)}
    mean_move = [0.25, 1.5]  # (1·[1, 0] + 3·[0, 2]) / 4, the same every round
    expected = by_hand([0.0, 1.0], [mean_move, mean_move])
    paths = {name: FedAdam(eta=ETA, beta1=BETA1, beta2=BETA2, tau=TAU) for name in "fho"}
    states = {name: dict(start) for name in paths}

    # Execute
    for _ in range(2):
        for name, strategy in paths.items():
            x, updates = states[name], clients(states[name]["w"])
            if name == "f":  # folded as a batch does it
                folded = WeightedSum()
                assert strategy.fold is not None
                for update in updates:
                    folded.add(*strategy.fold.weighed(update, x))
                aggregate = strategy.start_round(x, folded=True)
                aggregate.take(updates, folded)
                states[name] = aggregate.finish()
            elif name == "h":  # held, as levels 4-5 do
                aggregate = strategy.start_round(x, folded=False)
                aggregate.take(updates, None)
                states[name] = aggregate.finish()
            else:  # a mean opened by secure aggregation
                mean = FedAvg().aggregate(x, updates)
                states[name] = strategy.finish_mean(x, mean, len(updates))

    # Assert: each path's model after round 2 is the paper's, in the model's
    # dtype; the counter comes from the clients.
    for name, state in states.items():
        assert state["w"].dtype == torch.float32, name
        torch.testing.assert_close(state["w"], torch.tensor(expected[-1]), rtol=1e-6, atol=1e-6)
        assert int(state["steps"]) == 7, name
    # It is not FedAvg: FedAvg would have moved w to [0.5, 4.0].
    assert not torch.allclose(states["h"]["w"], torch.tensor([0.5, 4.0]))


@pytest.mark.parametrize(
    ("option", "value"), [("eta", 0.0), ("tau", -1.0), ("beta1", 1.0), ("beta2", math.nan)]
)
def test_fedadam_refuses_parameters_outside_the_papers_ranges(option: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"FedAdam's {option}"):
        FedAdam(**{option: value})
