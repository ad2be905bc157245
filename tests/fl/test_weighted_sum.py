"""WeightedSum: FedAvg folded one update at a time, and sums computed apart merged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fl.aggregation import FedAvg, MeanFold
from fl.errors import ConfigError
from fl.privacy import DPConfig, DPFedAvg
from fl.robust import ScoredFedAvg
from fl.weighted_sum import WeightedSum, weighted_average


def random_states(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "w": torch.randn(4, 3, generator=g),
            "b": torch.randn(3, generator=g, dtype=torch.float64),
            "steps": torch.tensor(7),
        }
        for _ in range(n)
    ]


def test_split_sums_merged_equal_numpy_float64_reference() -> None:
    # Prepare: 7 states cut into batches of 3, 3 and 1, summed apart.
    states = random_states(7)
    weights = [float(w) for w in (60, 61, 59, 60, 1, 200, 3)]
    parts = []
    for batch in ((0, 1, 2), (3, 4, 5), (6,)):
        part = WeightedSum()
        for i in batch:
            part.add(states[i], weights[i])
        parts.append(part)

    # Execute
    total = WeightedSum()
    for part in parts:
        total.merge(part)
    result = total.average({k: t.dtype for k, t in states[0].items()})

    # Assert: an independent float64 numpy weighted mean, cast back per dtype.
    for key in ("w", "b"):
        stacked = np.stack([s[key].double().numpy() for s in states])
        expected = np.array(weights)[:, None, None] * stacked.reshape(7, -1, stacked.shape[-1])
        expected = expected.sum(0).reshape(stacked.shape[1:]) / sum(weights)
        assert result[key].dtype == states[0][key].dtype
        np.testing.assert_allclose(result[key].double().numpy(), expected, rtol=1e-6)
    assert torch.equal(result["steps"], torch.tensor(7))
    assert total.count == 7 and total.total == sum(weights)


def test_folding_in_order_is_bitwise_weighted_average() -> None:
    states = random_states(5, seed=1)
    weights = [3.0, 1.0, 4.0, 1.0, 5.0]
    acc = WeightedSum()
    for state, weight in zip(states, weights, strict=True):
        acc.add(state, weight)
    folded = acc.average({k: t.dtype for k, t in states[0].items()})
    reference = weighted_average(states, weights)
    assert all(torch.equal(folded[k], reference[k]) for k in reference)


def test_layout_mismatches_and_bad_weights_are_config_errors() -> None:
    state = random_states(1)[0]
    acc = WeightedSum()
    acc.add(state, 1.0)
    with pytest.raises(ConfigError, match="different keys"):
        acc.add({"w": state["w"]}, 1.0)
    with pytest.raises(ConfigError, match="'w' is"):
        acc.add({**state, "w": torch.zeros(2, 2)}, 1.0)
    with pytest.raises(ConfigError, match="differs"):
        acc.add({**state, "steps": torch.tensor(8)}, 1.0)
    with pytest.raises(ConfigError, match="finite"):
        acc.add(state, float("nan"))
    with pytest.raises(ConfigError, match="no state"):
        WeightedSum().average({})
    zero = WeightedSum()
    zero.add(state, 0.0)
    with pytest.raises(ConfigError, match="positive sum"):
        zero.average({k: t.dtype for k, t in state.items()})


def test_fedavg_and_fixed_clip_dp_fedavg_fold() -> None:
    # ScoredFedAvg reports per-client scores, adaptive clipping needs every norm:
    # both need every update, not a sum.
    fixed = DPConfig(mode="client", noise_multiplier=1.0, clip=1.0)
    adaptive = DPConfig(mode="client", noise_multiplier=1.0, clip=1.0, adaptive_quantile=0.5)
    state = {"w": torch.zeros(2), "steps": torch.tensor(1)}
    assert FedAvg.fold == MeanFold() and ScoredFedAvg.fold is None
    assert DPFedAvg(fixed).fold == MeanFold(clip=1.0) and DPFedAvg(adaptive).fold is None
    # DP-FedAvg keeps its folded mean in float64: the noise goes on before rounding.
    assert MeanFold().mean_dtypes(state) == {"w": torch.float32, "steps": torch.int64}
    assert MeanFold(clip=1.0).mean_dtypes(state) == {"w": torch.float64, "steps": torch.int64}


def test_folding_in_groups_gives_the_bits_of_folding_one_by_one() -> None:
    # Prepare: 7 states larger than one fold slice, uneven groupings.
    g = torch.Generator().manual_seed(3)
    states = [{"w": torch.randn(40_000, generator=g), "steps": torch.tensor(2)} for _ in range(7)]
    weights = [float(w) for w in range(1, 8)]
    one_by_one = WeightedSum()
    for state, weight in zip(states, weights, strict=True):
        one_by_one.add(state, weight)

    # Execute
    grouped = WeightedSum()
    items = list(zip(states, weights, strict=True))
    for group in (items[:3], items[3:4], [], items[4:]):
        grouped.add_many(group)

    # Assert
    assert torch.equal(grouped.sums["w"], one_by_one.sums["w"])
    assert (grouped.total, grouped.count) == (one_by_one.total, 7)


def test_a_refused_group_leaves_the_sum_unchanged() -> None:
    # Prepare
    acc = WeightedSum()
    acc.add({"w": torch.ones(3), "steps": torch.tensor(1)}, 1.0)
    before = acc.sums["w"].clone()
    good = {"w": torch.ones(3), "steps": torch.tensor(1)}

    # Execute / Assert: a bad counter or weight anywhere in the group refuses all of it.
    with pytest.raises(ConfigError, match="differs"):
        acc.add_many([(good, 1.0), ({"w": torch.ones(3), "steps": torch.tensor(9)}, 1.0)])
    with pytest.raises(ConfigError, match="weights"):
        acc.add_many([(good, 1.0), (good, math.nan)])
    assert torch.equal(acc.sums["w"], before) and (acc.total, acc.count) == (1.0, 1)
