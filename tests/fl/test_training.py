from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from fl.data import Split
from fl.errors import ConfigError, DataError
from fl.models import get_state
from fl.training import TrainConfig, evaluate, train_local
from tests.fl.synthetic import separable_split


def linear_model(seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def test_train_local_lowers_loss_on_separable_data() -> None:
    # Prepare
    data, model = separable_split(), linear_model()
    before = evaluate(model, data)
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05)

    # Execute
    result = train_local(model, data, config, torch.Generator().manual_seed(0))

    # Assert
    after = evaluate(model, data)
    assert after.loss < 0.5 * before.loss
    assert after.accuracy >= 0.95
    assert result.num_samples == 200
    assert result.steps == 3 * math.ceil(200 / 32)
    assert result.seconds > 0


def test_train_local_mean_loss_is_the_sample_weighted_loss() -> None:
    # Prepare: with a negligible lr the weights stay put, so every batch's loss is
    # the initial model's loss on it and the weighted mean is the full-data loss.
    data, model = separable_split(n=70), linear_model()
    reference = evaluate(model, data).loss
    config = TrainConfig(epochs=2, batch_size=32, lr=1e-12)

    # Execute
    result = train_local(model, data, config, torch.Generator().manual_seed(0))

    # Assert
    assert result.mean_loss == pytest.approx(reference, rel=1e-5)


def test_train_local_is_bitwise_reproducible_and_leaves_global_rng_alone() -> None:
    # Prepare
    data = separable_split()
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-4)
    models = [linear_model(), linear_model(), linear_model()]
    rng_before = torch.get_rng_state()

    # Execute
    for model, seed in zip(models, [1, 1, 2], strict=True):
        train_local(model, data, config, torch.Generator().manual_seed(seed))

    # Assert
    a, b, c = (get_state(m) for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_evaluate_matches_numpy_reference_and_restores_mode() -> None:
    # Prepare
    data, model = separable_split(n=53, seed=3), linear_model(seed=4)
    linear = model[1]
    assert isinstance(linear, nn.Linear)
    w, b = linear.weight.detach().double().numpy(), linear.bias.detach().double().numpy()
    logits = data.x.reshape(53, -1).double().numpy() @ w.T + b
    y = data.y.numpy()
    log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    expected_loss = float(np.mean(log_z - logits[np.arange(53), y]))
    expected_acc = float(np.mean(logits.argmax(1) == y))
    model.train()

    # Execute
    result = evaluate(model, data, batch_size=7)

    # Assert
    assert result.num_samples == 53
    assert result.accuracy == pytest.approx(expected_acc)
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)
    assert model.training


def test_empty_data_is_rejected() -> None:
    # Prepare
    empty = Split(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64))
    config = TrainConfig(epochs=1, batch_size=4, lr=0.1)

    # Execute / Assert
    with pytest.raises(DataError, match="empty"):
        train_local(linear_model(), empty, config, torch.Generator())
    with pytest.raises(DataError, match="empty"):
        evaluate(linear_model(), empty)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
        ({"batch_size": 0}, "batch size must be >= 1, got 0"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"lr": float("nan")}, "lr must be > 0"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"momentum": -0.1}, "momentum"),
        ({"weight_decay": -1.0}, "weight decay must be >= 0, got -1.0"),
    ],
)
def test_train_config_validates(kwargs: dict[str, float], match: str) -> None:
    base: dict[str, float] = {"epochs": 1, "batch_size": 32, "lr": 0.1}
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**{**base, **kwargs})  # type: ignore[arg-type]


def test_train_config_dict_round_trip_through_json() -> None:
    # Prepare
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, momentum=0.9, weight_decay=1e-4)

    # Execute
    wire = json.loads(json.dumps(config.to_dict()))
    back = TrainConfig.from_dict(wire)

    # Assert
    assert back == config
    assert TrainConfig.from_dict({"epochs": 1, "batch_size": 8, "lr": 1}).lr == 1.0


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"epochs": 1, "batch_size": 8, "lr": 0.1, "nesterov": True}, r"unknown .*\['nesterov'\]"),
        ({"epochs": 1.5, "batch_size": 8, "lr": 0.1}, "'epochs' must be an integer"),
        ({"epochs": True, "batch_size": 8, "lr": 0.1}, "'epochs' must be a number"),
        ({"epochs": 1, "batch_size": 8, "lr": "0.1"}, "'lr' must be a number"),
        ({"epochs": 1, "batch_size": 8}, "incomplete"),
        ({"epochs": 1, "batch_size": 8, "lr": -1}, "lr must be > 0"),
    ],
)
def test_train_config_from_dict_rejects(d: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(d)


def test_update_clip_projects_the_move_and_a_diverged_move_becomes_none() -> None:
    # Prepare
    data = separable_split()
    model = linear_model()
    start = {k: t.clone() for k, t in model.state_dict().items()}
    clipped = TrainConfig(epochs=1, batch_size=10, lr=0.5, update_clip=0.01)
    diverging = TrainConfig(epochs=1, batch_size=10, lr=1e38, update_clip=0.01)

    # Execute
    train_local(model, data, clipped, torch.Generator().manual_seed(0))
    moved = {k: t.clone() for k, t in model.state_dict().items()}
    train_local(model, data, diverging, torch.Generator().manual_seed(0))

    # Assert: the move has norm 0.01; the diverged round leaves the model where it was.
    norm = torch.sqrt(sum(((moved[k] - start[k]).double() ** 2).sum() for k in start))
    assert float(norm) == pytest.approx(0.01, rel=1e-4)
    for key, value in model.state_dict().items():
        assert torch.equal(value, moved[key])
