from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fl.aggregation import ClientUpdate, FedAvg
from fl.detection import RobustReport, flag, flag_quality, suspicion_scores
from fl.errors import ConfigError
from fl.robust import (
    Krum,
    Median,
    MultiKrum,
    ScoredFedAvg,
    TrimmedMean,
    coordinate_median,
    krum,
    krum_scores,
    multi_krum,
    parse_aggregator,
    trimmed_mean,
)

F64 = torch.float64

# Five hand-placed 2-D points, in a scrambled order so that the winners are not index 0.
#   idx: 0=(2,2) 1=(6,0) 2=(0,0) 3=(0,2) 4=(1,0)
KRUM_POINTS = torch.tensor([[2.0, 2.0], [6.0, 0.0], [0.0, 0.0], [0.0, 2.0], [1.0, 0.0]], dtype=F64)


def test_coordinate_median_matches_numpy_for_odd_and_even_n() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    odd, even = rng.standard_normal((7, 5)), rng.standard_normal((6, 5))

    # Execute
    med_odd = coordinate_median(torch.from_numpy(odd))
    med_even = coordinate_median(torch.from_numpy(even))

    # Assert: even n averages the two middle values, as numpy does.
    np.testing.assert_allclose(med_odd.numpy(), np.median(odd, axis=0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(med_even.numpy(), np.median(even, axis=0), rtol=0, atol=1e-15)
    assert med_odd.dtype == F64 and med_odd.shape == (5,)


def test_trimmed_mean_matches_hand_computation() -> None:
    # Prepare: beta=0.2, n=5 → drop floor(1.0)=1 smallest and largest per column.
    # column 0: [1, 100, 3, 2, 4] → keep 2, 3, 4 → 3
    # column 1: [0, 1, -50, 3, 2] → keep 0, 1, 2 → 1
    x = torch.tensor([[1.0, 0.0], [100.0, 1.0], [3.0, -50.0], [2.0, 3.0], [4.0, 2.0]], dtype=F64)

    # Execute
    result = trimmed_mean(x, 0.2)
    untrimmed = trimmed_mean(x, 0.19)  # floor(0.95) = 0: plain mean

    # Assert
    assert torch.equal(result, torch.tensor([3.0, 1.0], dtype=F64))
    assert torch.allclose(untrimmed, x.mean(dim=0))


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, float("nan")])
def test_trimmed_mean_rejects_bad_beta(beta: float) -> None:
    with pytest.raises(ConfigError, match="beta"):
        trimmed_mean(torch.zeros(4, 2, dtype=F64), beta)


def test_krum_scores_match_hand_computation() -> None:
    # Prepare: n=5, f=1 → each score sums the n-f-2 = 2 smallest squared distances.
    # Squared distances (by point): a=(0,0) b=(1,0) c=(0,2) d=(2,2) e=(6,0)
    #   a-b 1, a-c 4, a-d 8, a-e 36, b-c 5, b-d 5, b-e 25, c-d 4, c-e 40, d-e 20
    #   a: 1+4=5  b: 1+5=6  c: 4+4=8  d: 4+5=9  e: 20+25=45
    # In KRUM_POINTS order (d, e, a, c, b):
    expected = torch.tensor([9.0, 45.0, 5.0, 8.0, 6.0], dtype=F64)

    # Execute
    scores = krum_scores(KRUM_POINTS, f=1)

    # Assert
    assert torch.equal(scores, expected)
    assert krum(KRUM_POINTS, f=1) == 2  # a


def test_multi_krum_picks_lowest_scores_and_strategy_averages_them() -> None:
    # Prepare: lowest three scores are a (5), b (6), c (8) → indices 2, 4, 3.
    global_state = {"w": torch.zeros(2, dtype=F64)}
    updates = [ClientUpdate(f"c{i}", {"w": p}, 1, 0.0) for i, p in enumerate(KRUM_POINTS)]

    # Execute
    chosen = multi_krum(KRUM_POINTS, f=1, m=3)
    result = MultiKrum(1, 3).aggregate(global_state, updates)

    # Assert: mean of a, b, c = ((0+1+0)/3, (0+0+2)/3)
    assert chosen == (2, 3, 4)
    assert torch.allclose(result["w"], torch.tensor([1 / 3, 2 / 3], dtype=F64))


def test_krum_rejects_too_few_updates_naming_n_and_f() -> None:
    # n=4, f=1: needs n > 2f+2 = 4.
    with pytest.raises(ConfigError, match=r"n=4, f=1"):
        krum_scores(KRUM_POINTS[:4], f=1)
    with pytest.raises(ConfigError, match=r"n=4, f=1"):
        Krum(1).aggregate({"w": torch.zeros(2, dtype=F64)}, _updates(KRUM_POINTS[:4]))
    with pytest.raises(ConfigError, match=r"m=5, n=5, f=1"):
        multi_krum(KRUM_POINTS, f=1, m=5)


def _updates(rows: torch.Tensor) -> list[ClientUpdate]:
    return [ClientUpdate(f"c{i}", {"w": r}, 1, 0.0) for i, r in enumerate(rows)]


def _attack_round() -> tuple[dict[str, torch.Tensor], list[ClientUpdate]]:
    """Eight honest clients near global + μ and one sending −10·μ (sign flip, scaled)."""
    gen = torch.Generator().manual_seed(0)
    global_state = {
        "w": torch.randn(4, 5, generator=gen),
        "b": torch.randn(5, generator=gen),
        "steps": torch.tensor(3),
    }
    mu = {k: torch.full_like(v, 0.5) for k, v in global_state.items() if v.is_floating_point()}

    def client(cid: str, scale: float) -> ClientUpdate:
        noise = {k: 0.05 * torch.randn(v.shape, generator=gen) for k, v in mu.items()}
        state = {k: global_state[k] + scale * mu[k] + noise[k] for k in mu}
        return ClientUpdate(cid, {**state, "steps": torch.tensor(3)}, 10, 0.0)

    return global_state, [client(f"h{i}", 1.0) for i in range(8)] + [client("evil", -10.0)]


@pytest.mark.parametrize(
    "spec", ["fedavg", "median", "trimmed-mean:0.2", "krum:2", "multi-krum:2:5"]
)
def test_sign_flipped_outlier_is_flagged_and_honest_are_not(spec: str) -> None:
    # Prepare
    global_state, updates = _attack_round()
    strategy = parse_aggregator(spec)

    # Execute
    strategy.aggregate(global_state, updates)
    report = strategy.last_report

    # Assert
    assert isinstance(report, RobustReport)
    assert report.flagged == ("evil",)
    assert report.centre_name == spec
    assert report.scores["evil"] > 2.0
    assert all(report.scores[f"h{i}"] <= 2.0 for i in range(8))
    assert flag_quality(report.flagged, {"evil"}) == (1.0, 1.0)


def test_robust_aggregate_ignores_outlier_where_fedavg_does_not() -> None:
    # Prepare
    global_state, updates = _attack_round()
    honest_mean = FedAvg().aggregate(global_state, updates[:-1])

    # Execute
    median = Median().aggregate(global_state, updates)
    fedavg = FedAvg().aggregate(global_state, updates)

    # Assert: the median stays near the honest mean (global + 0.5); FedAvg lands near
    # global + (8·0.5 − 10·0.5)/9 ≈ global − 0.06, i.e. about 0.56 from the honest mean.
    assert torch.allclose(median["w"], honest_mean["w"], atol=0.1)
    assert bool(((fedavg["w"] - honest_mean["w"]).abs() > 0.4).all())


def test_suspicion_scores_hand_computation_and_flag() -> None:
    # Prepare: distances to the origin 1, 2, 3, 10 → median 2.5 → 0.4, 0.8, 1.2, 4.
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [6.0, 8.0]], dtype=F64)

    # Execute
    scores = suspicion_scores(x, torch.zeros(2, dtype=F64))

    # Assert
    assert torch.allclose(scores, torch.tensor([0.4, 0.8, 1.2, 4.0], dtype=F64))
    assert flag(scores, 2.0) == (3,)
    assert flag(scores, 1.0) == (2, 3)


def test_suspicion_scores_when_most_updates_sit_on_the_centre() -> None:
    x = torch.tensor([[0.0], [0.0], [0.0], [1.0]], dtype=F64)
    scores = suspicion_scores(x, torch.zeros(1, dtype=F64))
    assert scores.tolist() == [0.0, 0.0, 0.0, float("inf")]


@pytest.mark.parametrize(
    ("flagged", "attackers", "expected"),
    [
        ((), (), (1.0, 1.0)),
        ((), ("x",), (1.0, 0.0)),
        (("a",), (), (0.0, 1.0)),
        (("a", "x"), ("x", "y"), (0.5, 0.5)),
        (("x", "y"), ("x", "y", "z", "w"), (1.0, 0.5)),
    ],
)
def test_flag_quality_conventions(
    flagged: tuple[str, ...], attackers: tuple[str, ...], expected: tuple[float, float]
) -> None:
    assert flag_quality(flagged, attackers) == expected


@pytest.mark.parametrize("spec", ["median", "trimmed-mean:0.25", "krum:0", "multi-krum:0:2"])
def test_strategy_round_trip_keeps_layout_and_non_float_tensors(spec: str) -> None:
    # Prepare: mixed dtypes; every client identical → every aggregator returns that state.
    global_state = {
        "h": torch.zeros(2, 3, dtype=torch.float16),
        "n": torch.tensor(7),
        "w": torch.zeros(4, dtype=torch.float32),
        "d": torch.zeros((), dtype=F64),
    }
    client = {
        "h": torch.full((2, 3), 1.5, dtype=torch.float16),
        "n": torch.tensor(9),
        "w": torch.tensor([1.0, -2.0, 3.0, 0.25]),
        "d": torch.tensor(4.0, dtype=F64),
    }
    updates = [ClientUpdate(f"c{i}", client, i + 1, 0.0) for i in range(4)]

    # Execute
    result = parse_aggregator(spec).aggregate(global_state, updates)

    # Assert
    assert list(result) == list(global_state)
    for key, ref in client.items():
        assert result[key].dtype == ref.dtype and result[key].shape == ref.shape
        assert torch.equal(result[key], ref)


def test_median_strategy_matches_numpy_on_deltas() -> None:
    # Prepare
    rng = np.random.default_rng(1)
    g = rng.standard_normal((3, 2))
    states = [g + rng.standard_normal((3, 2)) for _ in range(4)]
    updates = [
        ClientUpdate(f"c{i}", {"p": torch.from_numpy(s)}, 1, 0.0) for i, s in enumerate(states)
    ]

    # Execute
    result = Median().aggregate({"p": torch.from_numpy(g)}, updates)

    # Assert
    expected = g + np.median(np.stack(states) - g, axis=0)
    np.testing.assert_allclose(result["p"].numpy(), expected, rtol=0, atol=1e-12)


def test_scored_fedavg_aggregates_exactly_like_fedavg() -> None:
    # Prepare
    global_state, updates = _attack_round()
    updates = [ClientUpdate(u.client_id, u.state, i + 1, 0.0) for i, u in enumerate(updates)]

    # Execute
    strategy = ScoredFedAvg()
    result = strategy.aggregate(global_state, updates)

    # Assert
    expected = FedAvg().aggregate(global_state, updates)
    assert all(torch.equal(result[k], expected[k]) for k in expected)
    assert strategy.name == "fedavg" and strategy.last_report is not None


def test_strategy_rejects_bad_rounds() -> None:
    # Prepare
    g = {"w": torch.zeros(2), "n": torch.tensor(1)}
    ok = {"w": torch.ones(2), "n": torch.tensor(1)}

    def round_with_b(**b_overrides: torch.Tensor) -> list[ClientUpdate]:
        return [ClientUpdate("a", ok, 1, 0.0), ClientUpdate("b", {**ok, **b_overrides}, 1, 0.0)]

    # Execute / Assert
    with pytest.raises(ConfigError, match="'n' differs"):
        Median().aggregate(g, round_with_b(n=torch.tensor(2)))
    with pytest.raises(ConfigError, match=r"client 'b' 'w' is \(3,\)"):
        Median().aggregate(g, round_with_b(w=torch.ones(3)))
    with pytest.raises(ConfigError, match="distinct client ids"):
        Median().aggregate(g, [ClientUpdate("a", ok, 1, 0.0), ClientUpdate("a", ok, 1, 0.0)])


@pytest.mark.parametrize("spec", ["median", "trimmed-mean:0.2", "krum:1", "multi-krum:1:3"])
def test_a_non_finite_update_is_flagged_and_left_out_never_a_crash(spec: str) -> None:
    # Prepare: five honest clients near w = 1, one sends NaN, one +inf.
    g = {"w": torch.zeros(2)}
    honest = [
        ClientUpdate(f"h{i}", {"w": torch.tensor([1.0, 1.0 + i / 100])}, 1, 0.0) for i in range(5)
    ]
    bad = [
        ClientUpdate("nan", {"w": torch.tensor([float("nan"), 1.0])}, 1, 0.0),
        ClientUpdate("inf", {"w": torch.tensor([1.0, float("inf")])}, 1, 0.0),
    ]
    strategy = parse_aggregator(spec)

    # Execute
    result = strategy.aggregate(g, honest + bad)

    # Assert: the aggregate comes from the honest updates only.
    assert bool(torch.isfinite(result["w"]).all())
    assert 1.0 <= float(result["w"][1]) <= 1.04 and float(result["w"][0]) == 1.0
    assert strategy.last_report is not None
    assert {"nan", "inf"} <= set(strategy.last_report.flagged)
    assert strategy.last_report.scores["nan"] == math.inf


def test_all_non_finite_keeps_the_global_model_and_fedavg_averages_as_fedavg_does() -> None:
    # Prepare
    g = {"w": torch.ones(2)}
    nan = [ClientUpdate(f"c{i}", {"w": torch.full((2,), float("nan"))}, 1, 0.0) for i in range(3)]
    median, fedavg = Median(), ScoredFedAvg()

    # Execute
    kept = median.aggregate(g, nan)
    averaged = fedavg.aggregate(g, [*nan[:1], ClientUpdate("ok", {"w": torch.zeros(2)}, 1, 0.0)])

    # Assert: the median keeps the model; FedAvg has no defence (NaN) but still reports.
    assert torch.equal(kept["w"], g["w"])
    assert median.last_report is not None and len(median.last_report.flagged) == 3
    assert bool(torch.isnan(averaged["w"]).all())
    assert fedavg.last_report is not None and fedavg.last_report.flagged == ("c0",)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("fedavg", (ScoredFedAvg, "fedavg")),
        ("median", (Median, "median")),
        (" trimmed-mean:0.1 ", (TrimmedMean, "trimmed-mean:0.1")),
        ("krum:2", (Krum, "krum:2")),
        ("multi-krum:2:5", (MultiKrum, "multi-krum:2:5")),
    ],
)
def test_parse_aggregator_accepts_documented_forms(spec: str, expected: tuple[type, str]) -> None:
    strategy = parse_aggregator(spec)
    assert type(strategy) is expected[0] and strategy.spec == expected[1]
    assert strategy.last_report is None


@pytest.mark.parametrize(
    "spec",
    [
        *("", "mean", "median:1", "trimmed-mean", "trimmed-mean:x", "trimmed-mean:0.5"),
        *("krum", "krum:-1", "krum:1.5", "multi-krum:2", "multi-krum:2:0", "krum:2:3"),
    ],
)
def test_parse_aggregator_rejects_malformed_specs_in_one_line(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_aggregator(spec)
    message = str(info.value)
    assert "\n" not in message and repr(spec) in message
    assert "fedavg, median, trimmed-mean:BETA, krum:F, multi-krum:F:M" in message


def test_parse_aggregator_threshold_is_validated() -> None:
    assert parse_aggregator("median", threshold=3.0).threshold == 3.0
    with pytest.raises(ConfigError, match="threshold"):
        parse_aggregator("median", threshold=0.0)


@st.composite
def honest_and_corrupt(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """An honest (h, d) matrix and a copy with a strict minority b < h rows made huge."""
    h, d = draw(st.integers(2, 8)), draw(st.integers(1, 4))
    honest = draw(arrays(np.float64, (h, d), elements=st.floats(-10, 10)))
    b = draw(st.integers(0, h - 1))
    bad = draw(arrays(np.float64, (b, d), elements=st.sampled_from([-1e9, 1e9])))
    return honest, np.concatenate([honest, bad])


@settings(max_examples=200, deadline=None)
@given(honest_and_corrupt())
def test_median_stays_within_honest_range_under_minority_corruption(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    honest, corrupted = data
    med = coordinate_median(torch.from_numpy(corrupted)).numpy()
    assert np.all(med >= honest.min(axis=0)) and np.all(med <= honest.max(axis=0))


@settings(max_examples=200, deadline=None)
@given(honest_and_corrupt(), st.floats(0.0, 0.49))
def test_trimmed_mean_stays_within_honest_range_when_trimming_covers_attackers(
    data: tuple[np.ndarray, np.ndarray], beta: float
) -> None:
    honest, corrupted = data
    n, bad = len(corrupted), len(corrupted) - len(honest)
    if math.floor(beta * n) < bad:
        beta = bad / n  # trim at least as many as there are attackers
        if math.floor(beta * n) < bad:  # bad / n * n rounded down
            beta = math.nextafter(beta, 1.0)
    assume(beta < 0.5)
    result = trimmed_mean(torch.from_numpy(corrupted), beta).numpy()
    assert np.all(result >= honest.min(axis=0) - 1e-9)
    assert np.all(result <= honest.max(axis=0) + 1e-9)
