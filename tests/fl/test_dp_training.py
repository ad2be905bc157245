from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fl.data import Split
from fl.dp_training import dp_sample_rate, dp_steps_per_epoch, train_local_dp
from fl.errors import ConfigError
from fl.models import get_state
from fl.noise import SecureNoise, SeededNoise
from fl.privacy import DPConfig, PrivacyAccountant
from fl.training import TrainConfig, evaluate
from tests.fl.synthetic import separable_split, small_cnn


def sample_dp(noise: float = 1.0, clip: float = 1.0) -> DPConfig:
    return DPConfig(mode="sample", noise_multiplier=noise, clip=clip)


def test_sample_rate_and_steps_follow_opacus_conventions() -> None:
    assert dp_sample_rate(256, 60_000) == 256 / 60_000
    assert dp_steps_per_epoch(256, 60_000) == 234
    assert dp_sample_rate(100, 10) == 1.0 and dp_steps_per_epoch(100, 10) == 1


def test_train_local_dp_records_steps_and_leaves_the_model_unwrapped() -> None:
    # Prepare
    data, model = separable_split(64), small_cnn()
    keys = list(small_cnn().state_dict())
    accountant = PrivacyAccountant()
    config = TrainConfig(epochs=2, batch_size=8, lr=0.1)

    # Execute
    result = train_local_dp(model, data, config, sample_dp(), SecureNoise(), accountant)

    # Assert
    assert result.steps == 2 * 8 == accountant.steps
    assert accountant.opacus.history == [(1.0, 8 / 64, 16)]
    assert accountant.epsilon(1e-5) > 0
    assert result.num_samples == 64 and np.isfinite(result.mean_loss)
    assert list(model.state_dict()) == keys
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
    for p in model.parameters():
        assert not hasattr(p, "grad_sample") and not hasattr(p, "summed_grad")
    # The plain loop still works on the returned model.
    assert np.isfinite(evaluate(model, data).loss)


def test_train_local_dp_is_reproducible_with_a_seeded_noise_source() -> None:
    data, config = separable_split(64), TrainConfig(epochs=1, batch_size=16, lr=0.1)
    states = []
    for _ in range(2):
        model = small_cnn()
        train_local_dp(model, data, config, sample_dp(), SeededNoise(5), PrivacyAccountant())
        states.append(get_state(model))
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])


def per_sample_clipped_mean(model: nn.Module, data: Split, clip: float) -> list[torch.Tensor]:
    """Reference: mean over examples of each example's gradient clipped to ``clip``, by hand."""
    params = list(model.parameters())
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for i in range(len(data)):
        loss = F.cross_entropy(model(data.x[i : i + 1]), data.y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        factor = min(1.0, clip / (norm.item() + 1e-6))  # Opacus's +1e-6
        for t, g in zip(total, grads, strict=True):
            t += factor * g.double()
    return [t / len(data) for t in total]


def test_one_full_batch_step_without_noise_is_minus_lr_times_the_clipped_mean() -> None:
    # Prepare: batch size = N gives q = 1, so the batch is all of the data and
    # the denominator q·N is its size.
    data, model = separable_split(n=20), small_cnn()
    reference = per_sample_clipped_mean(small_cnn(), data, clip=0.05)
    before = [p.detach().clone() for p in model.parameters()]
    config = TrainConfig(epochs=1, batch_size=20, lr=0.5)

    # Execute
    train_local_dp(
        model,
        data,
        config,
        sample_dp(0.0, 0.05),
        SecureNoise(),
        PrivacyAccountant(),
    )

    # Assert
    for p, b, ref in zip(model.parameters(), before, reference, strict=True):
        np.testing.assert_allclose((p.detach() - b).double().numpy(), -0.5 * ref.numpy(), atol=1e-6)


def test_every_step_moves_the_weights_by_at_most_lr_times_clip() -> None:
    data, model = separable_split(n=20), small_cnn()
    config, dp = TrainConfig(epochs=1, batch_size=20, lr=0.5), sample_dp(0.0, 1e-3)
    noise, accountant = SecureNoise(), PrivacyAccountant()
    for _ in range(5):
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        train_local_dp(model, data, config, dp, noise, accountant)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        change = torch.linalg.vector_norm(after - before).item()
        assert 0 < change <= 0.5 * 1e-3 * (1 + 1e-5)
    assert accountant.steps == 5


def test_train_local_dp_learns_separable_data_with_noise() -> None:
    data, model = separable_split(n=200), small_cnn()
    before = evaluate(model, data).accuracy
    config = TrainConfig(epochs=8, batch_size=50, lr=0.5)
    train_local_dp(
        model,
        data,
        config,
        sample_dp(0.5, 1.0),
        SecureNoise(),
        PrivacyAccountant(),
    )
    assert evaluate(model, data).accuracy > max(0.8, before + 0.3)


def test_train_local_dp_needs_sample_mode() -> None:
    dp = DPConfig(mode="client", noise_multiplier=1.0, clip=1.0)
    with pytest.raises(ConfigError, match="mode 'sample'"):
        train_local_dp(
            small_cnn(),
            separable_split(64),
            TrainConfig(epochs=1, batch_size=8, lr=0.1),
            dp,
            SecureNoise(),
            PrivacyAccountant(),
        )
