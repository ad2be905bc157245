"""The privacy accountant is told the sampling each DP mechanism really uses.

Client-level DP-FedAvg draws a fixed-size cohort without replacement, so its
accountant is the without-replacement RDP bound (Wang, Balle, Kasiviswanathan
2019); sample-level DP-SGD draws Poisson batches, so its accountant is
Opacus's Poisson RDP. A mismatch on either side fails here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

import fl.dp_training
from fl.accounting import RDP_ORDERS, PrivacyAccountant, epsilon_after, fixed_size_gaussian_rdp
from fl.errors import ConfigError
from fl.noise import NoiseSource, SecureNoise, SeededNoise
from fl.privacy import DPConfig, DPFedAvg
from fl.training import TrainConfig, train_local
from tests.fl.synthetic import separable_split, small_cnn

CLIENT_DP = DPConfig(mode="client", noise_multiplier=1.0, clip=1.0)


def test_dp_fedavg_cohorts_are_fixed_size_uniform_and_not_from_the_seeded_sampler() -> None:
    # Prepare: K = 10 clients, C = 0.3; the run's sampler seeded as levels.py does.
    ids = [f"c{i}" for i in range(10)]
    strategy = DPFedAvg(CLIENT_DP)
    sampler = torch.Generator().manual_seed(0)

    # Execute: 3,000 rounds.
    cohorts = [strategy.sample_clients(ids, 0.3, sampler) for _ in range(3000)]

    # Assert: exactly m = 3 each round, in id order; each client in ≈ 30 % of them
    # (binomial sd 0.84 %: ±4 % is > 4 sd); the seeded sampler does not decide
    # the cohort (a second strategy on the same seed draws other cohorts).
    assert {len(c) for c in cohorts} == {3}
    assert all(c == sorted(c, key=ids.index) for c in cohorts)
    for client in ids:
        assert abs(sum(client in c for c in cohorts) / 3000 - 0.3) < 0.04
    again = DPFedAvg(CLIENT_DP)
    replay = [again.sample_clients(ids, 0.3, torch.Generator().manual_seed(0)) for _ in range(20)]
    assert replay != cohorts[:20]


def test_a_seeded_source_makes_cohorts_reproducible() -> None:
    ids = [str(i) for i in range(20)]
    draws = [
        [
            DPFedAvg(CLIENT_DP, noise=SeededNoise(4)).sample_clients(ids, 0.25, torch.Generator())
            for _ in range(3)
        ]
        for _ in range(2)
    ]
    assert draws[0] == draws[1]


def test_fixed_size_accounting_matches_dp_accounting_reference_values() -> None:
    # Reference: Google's dp_accounting 0.6 RdpAccountant(REPLACE_ONE) composing
    # SampledWithoutReplacementDpEvent(1000, 1000·q, GaussianDpEvent(z/2)) n times.
    for z, q, n, reference in [
        (1.0, 0.1, 100, 83.93691709771716),
        (2.0, 0.5, 20, 27.292581771292458),
        (4.0, 1.0, 3, 4.01191164235448),
    ]:
        ours = epsilon_after(n, z, q, 1e-5, sampling="fixed-size")
        assert ours == pytest.approx(reference, rel=0.02)


def test_fixed_size_bound_is_the_gaussian_at_q_1_and_grows_with_q() -> None:
    full = fixed_size_gaussian_rdp(1.0, 0.5)
    assert full[RDP_ORDERS.index(2)] == pytest.approx(2 / (2 * 0.25))  # α/(2σ²) at α = 2
    smaller = fixed_size_gaussian_rdp(0.1, 0.5)
    assert all(s <= f for s, f in zip(smaller, full, strict=True))
    assert epsilon_after(10, 2.0, 0.1, 1e-5, sampling="fixed-size") < epsilon_after(
        10, 2.0, 0.5, 1e-5, sampling="fixed-size"
    )


def test_fixed_size_accountant_records_history_and_refuses_prv() -> None:
    accountant = PrivacyAccountant(sampling="fixed-size")
    accountant.step(1.5, 0.2, steps=3)
    assert accountant.history == [(1.5, 0.2, 3)] and accountant.steps == 3
    assert 0 < accountant.epsilon(1e-5) < math.inf
    with pytest.raises(ConfigError, match="Poisson sampling only"):
        PrivacyAccountant("prv", sampling="fixed-size")


def test_poisson_batches_have_binomial_sizes_not_a_fixed_size() -> None:
    # A shuffled fixed-size batch would have variance 0; Poisson's is n·q·(1 − q).
    sizes = [len(b) for b in fl.dp_training.poisson_batches(400, 0.1, 2000, SecureNoise())]
    mean = sum(sizes) / len(sizes)
    var = sum((s - mean) ** 2 for s in sizes) / (len(sizes) - 1)
    assert abs(mean - 40) < 0.6  # sd of the mean ≈ 0.13
    assert 36 * 0.8 < var < 36 * 1.2  # n·q·(1 − q) = 36


def test_dp_sgd_trains_on_poisson_batches_and_accounts_them_as_poisson(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: spy on the batches DP-SGD draws, through the worker's entry point.
    seen: list[tuple[int, float, int, NoiseSource]] = []
    real = fl.dp_training.poisson_batches

    def spy(n: int, rate: float, steps: int, noise: NoiseSource) -> Iterator[torch.Tensor]:
        seen.append((n, rate, steps, noise))
        return real(n, rate, steps, noise)

    monkeypatch.setattr(fl.dp_training, "poisson_batches", spy)
    config = TrainConfig(epochs=1, batch_size=8, lr=0.1, dp_clip=1.0, dp_noise=1.0)

    # Execute
    result = train_local(small_cnn(), separable_split(64), config, torch.Generator())

    # Assert: Poisson batches at q = B/N from the CSPRNG, ⌊1/q⌋ steps; the
    # accountant DP-SGD is accounted with by default is the Poisson one.
    assert [(n, rate, steps) for n, rate, steps, _ in seen] == [(64, 8 / 64, 8)]
    assert isinstance(seen[0][3], SecureNoise) and result.steps == 8
    assert PrivacyAccountant().sampling == "poisson"
