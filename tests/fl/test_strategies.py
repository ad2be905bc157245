"""``--strategy``: built-ins by name, the user's class by import path or file, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fl.aggregation import ClientUpdate, FedAvg, Strategy
from fl.errors import ConfigError
from fl.fedopt import FedAdam
from fl.robust import Median, parse_aggregator
from fl.strategies import StrategyError, averages, check_aggregate, load_strategy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_strategy.py"


def test_builtins_by_name_with_options() -> None:
    assert type(load_strategy("fedavg")) is FedAvg
    adam = load_strategy("fedadam:eta=0.5,beta1=0.8")
    assert isinstance(adam, FedAdam) and (adam.eta, adam.beta1) == (0.5, 0.8)


@pytest.mark.parametrize(
    ("aggregator", "strategy"),
    [
        ("median", "median"),
        ("trimmed-mean:0.2", "trimmed-mean:beta=0.2"),
        ("krum:1", "krum:f=1"),
        ("multi-krum:1:3", "multi-krum:f=1,m=3"),
    ],
)
def test_the_robust_aggregators_are_strategies_by_either_spelling(
    aggregator: str, strategy: str
) -> None:
    """``--strategy krum:f=1`` is ``--aggregator krum:1``: the same class, the same
    aggregate and the same flagged client (one update far off the others)."""
    generator = torch.Generator().manual_seed(0)
    global_state = {"w": torch.zeros(3, 2), "b": torch.zeros(2)}
    updates = [
        ClientUpdate(
            f"c{i}",
            {k: torch.randn(v.shape, generator=generator) * 0.1 for k, v in global_state.items()},
            10,
            0.0,
        )
        for i in range(5)
    ]
    updates.append(
        ClientUpdate(
            "far", {k: torch.full(v.shape, 50.0) for k, v in global_state.items()}, 10, 0.0
        )
    )
    old, new = parse_aggregator(aggregator), load_strategy(strategy)
    assert type(new) is type(old) and new.spec == old.spec  # type: ignore[attr-defined]
    assert_same = [
        torch.equal(a, b)
        for a, b in zip(
            old.aggregate(global_state, updates).values(),
            new.aggregate(global_state, updates).values(),
            strict=True,
        )
    ]
    assert all(assert_same)
    assert old.last_report is not None and new.last_report is not None  # type: ignore[attr-defined]
    assert new.last_report.flagged == old.last_report.flagged == ("far",)  # type: ignore[attr-defined]


def test_a_users_class_by_module_path_and_by_file() -> None:
    by_module = load_strategy("fl.robust:Median")
    assert isinstance(by_module, Median)
    by_file = load_strategy(f"{EXAMPLE}:FedAvgM:beta=0.5")
    assert type(by_file).__name__ == "FedAvgM" and by_file.beta == 0.5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("scaffold", "neither a built-in (fedavg, fedadam, fedprox, median, "),
        ("no_such_module:Thing", "cannot import 'no_such_module'"),
        ("fl.robust:NoSuchClass", "fl.robust.NoSuchClass is not a subclass"),
        ("fl.errors:ConfigError", "is not a subclass of fl.aggregation.Strategy"),
        ("fedadam:eta=-1", "FedAdam's eta must be > 0"),
        ("fedadam:eta", "options are key=value"),
        ("fedadam:gamma=1", "fedadam({'gamma': 1}) failed"),
        (f"{EXAMPLE}:FedAvgM:beta=2", "beta must be in [0, 1)"),
        ("/nonexistent/strategy.py:X", "cannot import '/nonexistent/strategy.py'"),
    ],
)
def test_a_bad_spec_is_one_line_naming_it(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_strategy(spec)
    message = str(caught.value)
    assert fragment in message and repr(spec) in message and "\n" not in message


def test_only_averaging_strategies_run_where_the_coordinator_sees_only_the_sum() -> None:
    assert averages(FedAvg()) and averages(load_strategy("fedadam"))
    assert averages(load_strategy(f"{EXAMPLE}:FedAvgM"))
    assert not averages(Median())


def test_an_unusable_aggregate_names_the_strategy() -> None:
    previous = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    strategy = load_strategy("fedadam")
    check_aggregate(strategy, previous, {"w": torch.ones(2, 3), "b": torch.ones(3)})
    with pytest.raises(
        StrategyError, match="strategy 'fedadam' returned a state without \\['b'\\]"
    ):
        check_aggregate(strategy, previous, {"w": torch.ones(2, 3)})
    with pytest.raises(StrategyError, match="'w' of shape \\(3, 2\\), not \\(2, 3\\)"):
        check_aggregate(strategy, previous, {"w": torch.ones(3, 2), "b": torch.ones(3)})
    with pytest.raises(StrategyError, match="diverged: 'b' holds NaN"):
        check_aggregate(
            strategy, previous, {"w": torch.ones(2, 3), "b": torch.full((3,), float("nan"))}
        )


def test_the_example_fedavgm_follows_its_rule_held_and_opened() -> None:
    """v_t = β·v_{t−1} + Δ_t, x_{t+1} = x_t + v_t, by hand on one coordinate pair."""
    beta = 0.5
    held, opened = (load_strategy(f"{EXAMPLE}:FedAvgM:beta={beta}") for _ in range(2))
    assert isinstance(held, Strategy) and isinstance(opened, Strategy)
    x_held = x_opened = {"w": torch.tensor([0.0, 1.0])}
    x, v = [0.0, 1.0], [0.0, 0.0]
    for _ in range(3):
        moves = [(torch.tensor([1.0, 0.0]), 1), (torch.tensor([0.0, 2.0]), 3)]
        updates = [
            ClientUpdate(f"c{i}", {"w": x_held["w"] + move}, n, 0.0)
            for i, (move, n) in enumerate(moves)
        ]
        x_held = held.aggregate(x_held, updates)
        mean = {"w": x_opened["w"] + torch.tensor([0.25, 1.5])}  # as secure aggregation opens it
        x_opened = opened.finish_mean(x_opened, mean, 2)
        delta = [0.25, 1.5]  # (1·[1, 0] + 3·[0, 2]) / 4
        v = [beta * vi + di for vi, di in zip(v, delta, strict=True)]
        x = [xi + vi for xi, vi in zip(x, v, strict=True)]
        assert torch.allclose(x_held["w"], torch.tensor(x)), (x_held, x)
        assert torch.allclose(x_opened["w"], torch.tensor(x))
