"""The adversary who reads a run's parameters cannot subtract its DP noise.

The adversary holds everything a run logs — its experiment config, the MLflow
params of the level (the seed among them) — and the model the run released.
It regenerates the noise the way a seeded implementation would (a
``torch.Generator`` seeded with each integer the run logs, and the per-client
training seeds derived from them) and subtracts it. Against noise from a
CSPRNG the best it can do leaves an error of the noise's own size,
‖residual‖ ≈ √2·σ·√d, instead of ≈ 0. With the explicit simulation option
``dp_noise_seed`` the same attack succeeds: that run is not private, and says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch
from torch import nn

from fl.aggregation import ClientUpdate
from fl.data import Split
from fl.privacy import clip_updates
from fl.training import TrainConfig, train_local
from flows.config import ExperimentConfig
from flows.defence import DP_PRIVATE_TAG, Defence, dp_tags
from flows.level import level_named
from flows.rounds.clients import client_seed

D = 4_000  # parameters of the client-level toy model
N_CLIENTS = 4
CLIENT = {
    "levels": "2",
    "model": "mlp",
    "workers": N_CLIENTS,
    "rounds": 2,
    "train_samples": 400,
    "dp": "client",
    "dp_noise": 1.0,
    "dp_clip": 1.0,
    "seed": 1234,
}


def logged_integers(cfg: ExperimentConfig) -> list[int]:
    """Every integer among the level's MLflow params: candidate seeds."""
    params = cfg.mlflow_params(level_named("federated", cfg.aggregation))
    return sorted({int(v) for v in params.values() if v.isdigit()})


def candidate_seeds(cfg: ExperimentConfig) -> Iterator[int]:
    """The logged integers, and the per-client training seeds derived from them."""
    for s in logged_integers(cfg):
        yield s
        for round_index in range(cfg.rounds + 1):
            for client in range(cfg.workers):
                yield client_seed(s, round_index, client)


def client_updates() -> tuple[dict[str, torch.Tensor], list[ClientUpdate]]:
    g = torch.Generator().manual_seed(7)
    global_state = {"w": torch.randn(D, generator=g, dtype=torch.float64)}
    updates = [
        ClientUpdate(str(i), {"w": global_state["w"] + 3 * torch.randn(D, generator=g)}, 10, 0.0)
        for i in range(N_CLIENTS)
    ]
    return global_state, updates


def rerun_noise(cfg: ExperimentConfig) -> torch.Tensor:
    """The noise/n fedsim itself adds with these params, read off an update-free opening."""
    zero = {"w": torch.zeros(D, dtype=torch.float64)}
    ids = [str(i) for i in range(N_CLIENTS)]
    return Defence(cfg, ids).strategy.finish_mean(zero, dict(zero), N_CLIENTS)["w"]


def best_residual_client(
    cfg: ExperimentConfig, released: torch.Tensor, truth: torch.Tensor
) -> float:
    """The adversary's smallest ‖released − regenerated noise/n − truth‖.

    Guesses: a generator seeded with each logged integer, and fedsim itself run
    again with the logged params.
    """
    std = cfg.dp_noise * cfg.dp_clip
    guesses = [rerun_noise(cfg)]
    for s in logged_integers(cfg):
        g = torch.Generator().manual_seed(s)
        noise = torch.normal(0.0, std, size=(D,), generator=g, dtype=torch.float64)
        guesses.append(noise / N_CLIENTS)
    best = (released - truth).norm().item()  # not subtracting anything
    return min([best, *((released - guess - truth).norm().item() for guess in guesses)])


def clipped_mean(
    global_state: dict[str, torch.Tensor], updates: list[ClientUpdate]
) -> torch.Tensor:
    deltas = torch.stack([u.state["w"].double() - global_state["w"] for u in updates])
    return clip_updates(deltas, CLIENT["dp_clip"])[0].mean(dim=0)


def noise_floor(std: float, n: int, d: int) -> float:
    """Half the norm of the noise on the released mean: a residual an attack must beat."""
    return 0.5 * std / n * math.sqrt(d)


def test_client_dp_fedavg_noise_cannot_be_regenerated_from_the_logged_params() -> None:
    # Prepare: a DP-FedAvg round (the strategy holding every update).
    cfg = ExperimentConfig(**CLIENT)
    global_state, updates = client_updates()
    truth = clipped_mean(global_state, updates)

    # Execute: the run aggregates; the adversary subtracts its regenerated noise.
    released = Defence(cfg, [u.client_id for u in updates]).strategy.aggregate(
        global_state, updates
    )
    residual = best_residual_client(cfg, released["w"] - global_state["w"], truth)

    # Assert: what is left is noise-sized, not ≈ 0.
    assert residual > noise_floor(cfg.dp_noise * cfg.dp_clip, N_CLIENTS, D)


def test_noise_on_a_securely_opened_average_cannot_be_regenerated() -> None:
    # Prepare: the average secure aggregation opens (clipped updates, no noise).
    cfg = ExperimentConfig(**{**CLIENT, "levels": "2:secure"})
    global_state, updates = client_updates()
    truth = clipped_mean(global_state, updates)
    average = {"w": global_state["w"] + truth}

    # Execute: the coordinator noises the opened average; the adversary attacks.
    released = Defence(cfg, [u.client_id for u in updates]).strategy.finish_mean(
        global_state, average, N_CLIENTS
    )
    residual = best_residual_client(cfg, released["w"] - global_state["w"], truth)

    # Assert
    assert residual > noise_floor(cfg.dp_noise * cfg.dp_clip, N_CLIENTS, D)


# --- sample level: the noise DP-SGD draws on the worker -------------------------------------

N_SAMPLES = 32


def linear_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def toy_split() -> Split:
    g = torch.Generator().manual_seed(3)
    return Split(torch.randn(N_SAMPLES, 1, 28, 28, generator=g), torch.arange(N_SAMPLES) % 10)


def one_dp_sgd_step(config: TrainConfig, seed: int) -> torch.Tensor:
    """Σ clipped per-sample gradients + noise, read back from one SGD step (q = 1, lr = 1)."""
    model = linear_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    train_local(model, toy_split(), config, torch.Generator().manual_seed(seed))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return (before - after).double() * N_SAMPLES / config.lr  # the optimizer divides by q·N


def regenerated_sgd_noise(seed: int, std: float) -> torch.Tensor:
    """The noise as a seeded DP-SGD draws it: the Poisson mask first, then each parameter."""
    g = torch.Generator().manual_seed(seed)
    torch.rand(N_SAMPLES, generator=g)
    return torch.cat(
        [
            torch.normal(0.0, std, size=p.shape, generator=g).flatten()
            for p in linear_model().parameters()
        ]
    ).double()


def test_dp_sgd_noise_drawn_on_the_worker_cannot_be_regenerated() -> None:
    # Prepare: the worker's config as the coordinator sends it; the run's seed logged.
    cfg = ExperimentConfig(**{**CLIENT, "dp": "sample", "batch_size": N_SAMPLES, "lr": 1.0})
    config = TrainConfig(
        epochs=1, batch_size=N_SAMPLES, lr=1.0, dp_clip=cfg.dp_clip, dp_noise=cfg.dp_noise
    )
    seed = client_seed(cfg.seed, 1, 0)  # the first client of round 1

    # Execute: the noised step, the same step without noise (the truth), the attack.
    noisy = one_dp_sgd_step(config, seed)
    truth = one_dp_sgd_step(dataclasses.replace(config, dp_noise=0.0), seed)
    std = cfg.dp_noise * cfg.dp_clip
    residual = min(
        (noisy - regenerated_sgd_noise(s, std) - truth).norm().item() for s in candidate_seeds(cfg)
    )

    # Assert: the residual is the noise's size (√2·σ·√d), not ≈ 0.
    d = truth.numel()
    assert residual > noise_floor(std, 1, d)


# --- the explicit simulation option: reproducible, and so not private ----------------------


def test_with_a_noise_seed_the_same_attack_succeeds_and_the_run_says_it_is_not_private() -> None:
    # Prepare: a run with --dp-noise-seed, its params logged as usual.
    cfg = ExperimentConfig(**{**CLIENT, "levels": "2:secure", "dp_noise_seed": 99})
    global_state, updates = client_updates()
    truth = clipped_mean(global_state, updates)
    average = {"w": global_state["w"] + truth}

    # Execute
    released = Defence(cfg, [u.client_id for u in updates]).strategy.finish_mean(
        global_state, average, N_CLIENTS
    )
    residual = best_residual_client(cfg, released["w"] - global_state["w"], truth)

    # Assert: the noise comes off (the option is for simulation only), and the
    # logged params and tags say so.
    assert residual < 1e-9
    assert cfg.mlflow_params(level_named("federated", "secure"))["dp_noise_seed"] == "99"
    assert dp_tags(cfg)[DP_PRIVATE_TAG] == "false"
    assert dp_tags(ExperimentConfig(**CLIENT)) == {DP_PRIVATE_TAG: "true"}


def test_dp_sgd_repeats_exactly_only_with_a_noise_seed() -> None:
    config = TrainConfig(epochs=1, batch_size=8, lr=0.5, dp_clip=1.0, dp_noise=1.0)
    seeded = dataclasses.replace(config, dp_noise_seed=5)
    seed = client_seed(0, 1, 0)

    assert torch.equal(one_dp_sgd_step(seeded, seed), one_dp_sgd_step(seeded, seed))
    assert not torch.equal(one_dp_sgd_step(config, seed), one_dp_sgd_step(config, seed))
