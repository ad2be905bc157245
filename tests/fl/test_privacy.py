from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fl.aggregation import ClientUpdate
from fl.errors import ConfigError, FedsimError
from fl.noise import NoiseSource, SecureNoise, SeededNoise
from fl.privacy import (
    BudgetExceeded,
    DPConfig,
    DPFedAvg,
    PrivacyAccountant,
    adaptive_clip_update,
    check_budget,
    clip_update,
    clip_updates,
    epsilon_after,
    gaussian_sum_noise,
)


def client_dp(**overrides: object) -> DPConfig:
    kwargs: dict[str, object] = {"mode": "client", "noise_multiplier": 0.0, "clip": 1.0}
    kwargs.update(overrides)
    return DPConfig(**kwargs)  # type: ignore[arg-type]


# --- config ---


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mode": "user"}, "dp mode"),
        ({"noise_multiplier": -1.0}, "noise multiplier"),
        ({"clip": 0.0}, "clip norm"),
        ({"clip": math.nan}, "clip norm"),
        ({"delta": 1.0}, "delta"),
        ({"target_epsilon": 3.0}, "no target"),  # z = 0
        ({"noise_multiplier": 1.0, "target_epsilon": -1.0}, "target epsilon"),
        ({"adaptive_quantile": 1.0}, "quantile"),
        ({"mode": "sample", "adaptive_quantile": 0.5}, "adaptive clipping needs"),
        ({"clip_lr": 0.0}, "clip learning rate"),
        ({"accountant": "moments"}, "accountant"),
    ],
)
def test_dp_config_rejects_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        client_dp(**overrides)


def test_dp_config_round_trips_through_dict() -> None:
    dp = client_dp(noise_multiplier=1.1, target_epsilon=4.0, adaptive_quantile=0.5)
    assert DPConfig.from_dict(dp.to_dict()) == dp
    with pytest.raises(ConfigError, match="unknown dp config keys"):
        DPConfig.from_dict({**dp.to_dict(), "sigma": 1})
    with pytest.raises(ConfigError, match="incomplete"):
        DPConfig.from_dict({"mode": "client"})


# --- clipping and noise ---


def test_clip_update_scales_long_vectors_onto_the_ball_and_keeps_direction() -> None:
    u = torch.tensor([3.0, 4.0], dtype=torch.float64)  # norm 5
    clipped = clip_update(u, 1.0)
    np.testing.assert_allclose(clipped.numpy(), [0.6, 0.8])


def test_clip_updates_leaves_short_and_zero_rows_untouched() -> None:
    g = torch.Generator().manual_seed(0)
    updates = torch.randn(50, 30, generator=g, dtype=torch.float64)
    updates[0] = 0.0
    updates[1] *= 1e-3
    clipped, norms = clip_updates(updates, 2.0)
    reference = np.linalg.norm(updates.numpy(), axis=1)
    np.testing.assert_allclose(norms.numpy(), reference)
    assert (torch.linalg.vector_norm(clipped, dim=1) <= 2.0 + 1e-12).all()
    small = reference <= 2.0
    np.testing.assert_array_equal(clipped.numpy()[small], updates.numpy()[small])
    cos = torch.nn.functional.cosine_similarity(clipped[2:], updates[2:], dim=1)
    np.testing.assert_allclose(cos.numpy(), 1.0)


@pytest.mark.parametrize("source", [SecureNoise, lambda: SeededNoise(3)])
def test_gaussian_sum_noise_has_std_z_times_s(source: Callable[[], NoiseSource]) -> None:
    noise = gaussian_sum_noise(200_000, 1.5, 2.0, source())
    assert noise.dtype == torch.float64 and noise.shape == (200_000,)
    # std of the sample std ≈ σ/√(2d) = 0.0047: 3.0 ± 0.03 is > 6 sigma.
    assert abs(noise.std().item() - 3.0) < 0.03
    assert abs(noise.mean().item()) < 0.03
    assert torch.equal(gaussian_sum_noise(5, 0.0, 2.0, source()), torch.zeros(5).double())


def test_gaussian_sum_noise_repeats_only_from_a_seeded_source() -> None:
    assert torch.equal(
        gaussian_sum_noise(1000, 1.0, 1.0, SeededNoise(3)),
        gaussian_sum_noise(1000, 1.0, 1.0, SeededNoise(3)),
    )
    assert not torch.equal(
        gaussian_sum_noise(1000, 1.0, 1.0, SecureNoise()),
        gaussian_sum_noise(1000, 1.0, 1.0, SecureNoise()),
    )


def test_adaptive_clip_moves_towards_the_target_quantile() -> None:
    # All norms under S (b̄ = 1) with γ = 0.5: S shrinks by exp(-0.2·0.5).
    assert adaptive_clip_update(1.0, 1.0, 0.5, 0.2) == pytest.approx(math.exp(-0.1))
    assert adaptive_clip_update(2.0, 0.0, 0.5, 0.2) == pytest.approx(2.0 * math.exp(0.1))
    assert adaptive_clip_update(2.0, 0.5, 0.5, 0.2) == 2.0


# --- DP-FedAvg ---


def make_updates(
    global_state: dict[str, torch.Tensor], n: int, seed: int = 0
) -> list[ClientUpdate]:
    g = torch.Generator().manual_seed(seed)
    updates = []
    for i in range(n):
        scale = 0.1 * (i + 1)  # norms on both sides of S = 1
        state = {
            k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in global_state.items()
        }
        updates.append(ClientUpdate(f"c{i}", state, num_samples=10 * (i + 1), train_loss=0.0))
    return updates


def small_global() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    return {
        "w": torch.randn(4, 5, generator=g),
        "steps": torch.tensor(7),
        "b": torch.randn(3, generator=g),
    }


def test_dp_fedavg_without_noise_is_the_clipped_unweighted_mean() -> None:
    # Prepare: reference computed per client in numpy, float64.
    global_state = small_global()
    updates = make_updates(global_state, 6)
    deltas = []
    for u in updates:
        d = np.concatenate(
            [(u.state[k].double() - global_state[k].double()).numpy().ravel() for k in ("w", "b")]
        )
        deltas.append(d * min(1.0, 1.0 / np.linalg.norm(d)))
    mean = np.mean(deltas, axis=0)

    # Execute
    strategy = DPFedAvg(client_dp(), noise=SeededNoise(0))
    result = strategy.aggregate(global_state, updates)

    # Assert
    np.testing.assert_allclose(
        result["w"].numpy(), global_state["w"].numpy() + mean[:20].reshape(4, 5), atol=1e-6
    )
    np.testing.assert_allclose(
        result["b"].numpy(), global_state["b"].numpy() + mean[20:], atol=1e-6
    )
    assert result["steps"].item() == 7 and result["w"].dtype == torch.float32
    assert strategy.last_clip == 1.0
    assert strategy.last_norms is not None and strategy.last_norms.shape == (6,)
    assert strategy.name == "dp-fedavg"


def test_dp_fedavg_noise_std_is_z_s_over_n() -> None:
    # Prepare: identical clients so the clipped mean is known; large d for statistics.
    global_state = {"w": torch.zeros(100_000, dtype=torch.float64)}
    updates = [
        ClientUpdate(f"c{i}", {"w": torch.full((100_000,), 1e-4, dtype=torch.float64)}, 1, 0.0)
        for i in range(4)
    ]
    strategy = DPFedAvg(client_dp(noise_multiplier=2.0, clip=1.5), noise=SeededNoise(1))

    # Execute
    result = strategy.aggregate(global_state, updates)["w"] - 1e-4  # norm 0.03 < S: unclipped

    # Assert: std zS/n = 0.75, estimated to ±0.0017 (1 sigma)
    assert abs(result.std().item() - 0.75) < 0.01
    again = DPFedAvg(client_dp(noise_multiplier=2.0, clip=1.5), noise=SeededNoise(1))
    assert torch.equal(again.aggregate(global_state, updates)["w"] - 1e-4, result)


def test_dp_fedavg_adaptive_clip_follows_the_quantile_update() -> None:
    global_state = small_global()
    updates = make_updates(global_state, 6)
    strategy = DPFedAvg(client_dp(adaptive_quantile=0.5, clip=1.0), noise=SeededNoise(0))
    strategy.aggregate(global_state, updates)
    assert strategy.last_norms is not None
    below = float((strategy.last_norms <= 1.0).double().mean())
    assert strategy.clip == pytest.approx(1.0 * math.exp(-0.2 * (below - 0.5)))
    assert strategy.last_clip == 1.0


def test_dp_fedavg_rejects_mismatched_states_and_sample_mode() -> None:
    global_state = small_global()
    bad = ClientUpdate("x", {"w": torch.zeros(4, 5)}, 1, 0.0)
    with pytest.raises(ConfigError, match="state keys differ"):
        DPFedAvg(client_dp()).aggregate(global_state, [bad])
    with pytest.raises(ConfigError, match="mode 'client'"):
        DPFedAvg(DPConfig(mode="sample", noise_multiplier=1.0, clip=1.0))


# --- accounting ---


def test_accountant_matches_opacus_rdp_and_grows_with_steps() -> None:
    # Prepare
    ours = PrivacyAccountant("rdp")
    reference = RDPAccountant()

    # Execute
    ours.step(1.1, 0.01, steps=100)
    ours.step(0.9, 0.02, steps=50)
    for _ in range(100):
        reference.step(noise_multiplier=1.1, sample_rate=0.01)
    for _ in range(50):
        reference.step(noise_multiplier=0.9, sample_rate=0.02)

    # Assert
    assert ours.steps == 150
    assert ours.epsilon(1e-5) == reference.get_epsilon(delta=1e-5)
    before = ours.epsilon(1e-5)
    ours.step(0.9, 0.02)
    assert ours.epsilon(1e-5) > before
    assert PrivacyAccountant().epsilon(1e-5) == 0.0


def test_would_exceed_does_not_mutate_the_accountant() -> None:
    accountant = PrivacyAccountant()
    accountant.step(1.0, 0.1, steps=10)
    history = copy.deepcopy(accountant.opacus.history)
    eps = accountant.epsilon(1e-5)
    projected = accountant.projected_epsilon(1e-5, 1.0, 0.1, steps=10)
    assert projected == epsilon_after(20, 1.0, 0.1, 1e-5)
    assert accountant.would_exceed(eps + 1e-9, 1e-5, 1.0, 0.1, steps=10)
    assert not accountant.would_exceed(projected, 1e-5, 1.0, 0.1, steps=10)
    assert accountant.opacus.history == history


def test_check_budget_raises_a_clear_budget_exceeded() -> None:
    dp = client_dp(noise_multiplier=1.0, target_epsilon=2.0)
    accountant = PrivacyAccountant()
    rounds = 0
    with pytest.raises(BudgetExceeded) as info:
        while True:
            check_budget(accountant, dp, round_index=rounds + 1, sample_rate=0.5)
            accountant.step(1.0, 0.5)
            rounds += 1
    assert isinstance(info.value, FedsimError)
    assert accountant.epsilon(1e-5) <= 2.0 < info.value.epsilon
    assert str(info.value) == (
        f"privacy budget: round {rounds + 1} would reach ε={info.value.epsilon:.3g} > target 2 "
        f"at δ=1e-05; stopping after round {rounds}"
    )


def test_epsilon_after_with_prv_is_close_to_rdp_and_z0_is_infinite() -> None:
    rdp = epsilon_after(1000, 1.0, 0.01, 1e-5)
    prv = epsilon_after(1000, 1.0, 0.01, 1e-5, mechanism="prv")
    assert 0.5 * rdp < prv <= rdp  # PRV is tighter than the RDP conversion
    assert epsilon_after(1, 0.0, 0.5, 1e-5) == math.inf


def test_dp_fedavg_counts_a_non_finite_update_as_no_update() -> None:
    # Prepare: one client diverged to NaN, one moved by [3, 4] (norm 5, clipped to 1).
    global_state = {"w": torch.zeros(2)}
    updates = [
        ClientUpdate("nan", {"w": torch.tensor([float("nan"), 1.0])}, 1, 0.0),
        ClientUpdate("ok", {"w": torch.tensor([3.0, 4.0])}, 1, 0.0),
    ]
    strategy = DPFedAvg(DPConfig(mode="client", noise_multiplier=0.0, clip=1.0))

    # Execute
    result = strategy.aggregate(global_state, updates)

    # Assert: (0 + [0.6, 0.8]) / 2
    assert torch.allclose(result["w"], torch.tensor([0.3, 0.4]))
