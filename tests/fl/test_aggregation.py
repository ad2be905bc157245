from __future__ import annotations

import numpy as np
import pytest
import torch

from fl.aggregation import ClientUpdate, FedAvg, Strategy
from fl.errors import ConfigError
from fl.weighted_sum import weighted_average


def tiny_states() -> list[dict[str, torch.Tensor]]:
    return [
        {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])},
        {"w": torch.tensor([5.0, 6.0]), "b": torch.tensor([4.0])},
    ]


def test_fedavg_matches_hand_computation() -> None:
    # Prepare: weights 1 and 3 → w = (1·1 + 3·5)/4, (1·2 + 3·6)/4 = 4, 5; b = 3·4/4 = 3.
    s1, s2 = tiny_states()
    updates = [
        ClientUpdate("a", s1, num_samples=1, train_loss=0.5),
        ClientUpdate("b", s2, num_samples=3, train_loss=0.7),
    ]

    # Execute
    result = FedAvg().aggregate(s1, updates)

    # Assert
    assert torch.equal(result["w"], torch.tensor([4.0, 5.0]))
    assert torch.equal(result["b"], torch.tensor([3.0]))
    assert list(result) == ["w", "b"]


def test_weighted_average_matches_numpy_float64_reference() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(5)]
    weights = [float(w) for w in rng.integers(1, 1000, size=5)]
    states = [{"p": torch.from_numpy(a)} for a in arrays]

    # Execute
    result = weighted_average(states, weights)

    # Assert
    stacked = np.stack(arrays).astype(np.float64)
    expected = (np.tensordot(weights, stacked, axes=1) / sum(weights)).astype(np.float32)
    assert result["p"].dtype == torch.float32
    np.testing.assert_allclose(result["p"].numpy(), expected, rtol=1e-7, atol=1e-7)


def test_weighted_average_keeps_dtypes_and_equal_integer_tensors() -> None:
    # Prepare
    states = [
        {"h": torch.tensor([1.0], dtype=torch.float16), "n": torch.tensor(7)},
        {"h": torch.tensor([3.0], dtype=torch.float16), "n": torch.tensor(7)},
    ]

    # Execute
    result = weighted_average(states, [1.0, 1.0])

    # Assert
    assert result["h"].dtype == torch.float16 and result["h"].item() == 2.0
    assert result["n"].dtype == torch.int64 and result["n"].item() == 7


def test_weighted_average_rejects_differing_integer_tensors() -> None:
    states = [{"n": torch.tensor(1)}, {"n": torch.tensor(2)}]
    with pytest.raises(ConfigError, match="'n' differs"):
        weighted_average(states, [1.0, 1.0])


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([1.0], "2 states and 1 weights"),
        ([1.0, -1.0], r"\[1.0, -1.0\]"),
        ([0.0, 0.0], "positive sum"),
        ([1.0, float("nan")], "finite"),
    ],
)
def test_weighted_average_rejects_bad_weights(weights: list[float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        weighted_average(tiny_states(), weights)


def test_weighted_average_rejects_empty_and_mismatched_states() -> None:
    # Prepare
    s1, s2 = tiny_states()
    missing_key = {"w": s2["w"]}
    wrong_shape = {"w": torch.zeros(3), "b": s2["b"]}

    # Execute / Assert
    with pytest.raises(ConfigError, match="0 states"):
        weighted_average([], [])
    with pytest.raises(ConfigError, match=r"different keys.*'b'"):
        weighted_average([s1, missing_key], [1.0, 1.0])
    with pytest.raises(ConfigError, match=r"'w' is \(3,\)"):
        weighted_average([s1, wrong_shape], [1.0, 1.0])


def test_fedavg_rejects_no_updates_and_strategy_is_abstract() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        FedAvg().aggregate({}, [])
    with pytest.raises(TypeError):
        Strategy()  # type: ignore[abstract]


@pytest.mark.parametrize(("fraction", "expected"), [(0.3, 3), (0.01, 1), (0.55, 6), (1.0, 10)])
def test_sample_clients_count(fraction: float, expected: int) -> None:
    # Prepare
    ids = [f"w{i}" for i in range(10)]

    # Execute
    chosen = FedAvg().sample_clients(ids, fraction, torch.Generator().manual_seed(0))

    # Assert: m = max(round(C·K), 1), distinct, in client_ids order.
    assert len(chosen) == expected
    assert len(set(chosen)) == expected
    assert chosen == [c for c in ids if c in chosen]


def test_sample_clients_is_deterministic_per_seed() -> None:
    # Prepare
    ids = [f"w{i}" for i in range(20)]
    strategy = FedAvg()

    # Execute
    runs = {
        seed: [strategy.sample_clients(ids, 0.25, torch.Generator().manual_seed(seed))]
        for seed in range(5)
    }
    again = strategy.sample_clients(ids, 0.25, torch.Generator().manual_seed(3))

    # Assert
    assert runs[3][0] == again
    assert len({tuple(r[0]) for r in runs.values()}) > 1


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_sample_clients_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError, match="fraction"):
        FedAvg().sample_clients(["a", "b"], fraction, torch.Generator())


def test_sample_clients_rejects_empty_and_duplicate_ids() -> None:
    with pytest.raises(ConfigError, match="no clients"):
        FedAvg().sample_clients([], 0.5, torch.Generator())
    with pytest.raises(ConfigError, match="duplicate"):
        FedAvg().sample_clients(["a", "a"], 0.5, torch.Generator())
