"""Robust aggregation, attacks and DP end to end: real Prefect flows, real MLflow runs."""

from __future__ import annotations

from typing import Any

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from fl.aggregation import ClientUpdate
from fl.errors import ConfigError
from fl.partition import Partitioning
from fl.weighted_sum import WeightedSum
from flows.benchmark import benchmark_flow
from flows.config import ExperimentConfig
from flows.defence import Defence, attacker_indices
from flows.rounds.clients import ClientSettings
from flows.rounds.tasks import launch_virtual_workers, load_train_set, partition_train_set
from tests.flows.scenarios import SMALL
from workers.core import TRAIN_Y_ID, WorkerCore

pytestmark = pytest.mark.usefixtures("prefect_harness")

TEN = {**SMALL, "model": "mlp", "workers": 10, "train_samples": 1_000, "rounds": 2}


def _child(result: dict[str, Any], index: int = 0) -> Any:
    return MlflowClient().get_run(result["levels"][index]["run_id"])


def _history(run_id: str, metric: str) -> list[float]:
    return [m.value for m in MlflowClient().get_metric_history(run_id, metric)]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"levels": "2:secure", "aggregator": "median"}, "needs every client's update"),
        ({"levels": "2:he", "aggregator": "krum:1"}, "needs every client's update"),
        ({"levels": "2:secure", "strategy": "median"}, "needs every client's update"),
        ({"levels": "2", "dp": "client", "strategy": "krum:f=1"}, "each choose the server's rule"),
        ({"levels": "2", "strategy": "median", "aggregator": "krum:1"}, "each choose"),
        ({"levels": "2:secure", "attack": "sign-flip", "attackers": 1}, "never sees"),
        ({"levels": "4", "attack": "label-flip", "attackers": 1}, "levels 2-3"),
        ({"levels": "2", "attack": "sign-flip", "attackers": 0}, "needs attackers >= 1"),
        ({"levels": "2", "attack": "sign-flip", "attackers": 5}, "more than --workers"),
        ({"levels": "2", "attack": "flood", "attackers": 1}, "unknown attack"),
        ({"levels": "2", "aggregator": "krum:x"}, "bad aggregator"),
        ({"levels": "2", "dp": "central"}, "--dp 'central' is not one of"),
        ({"levels": "2", "dp": "client", "aggregator": "median"}, "use --aggregator fedavg"),
        ({"levels": "2", "dp": "client", "dp_clip": 0.0}, "clip norm must be > 0"),
        ({"levels": "2", "dp_target_epsilon": 3.0}, "need --dp client or sample"),
        ({"levels": "2", "dp": "sample", "dp_adaptive_quantile": 0.5}, "needs dp mode 'client'"),
        (
            {"levels": "2:secure", "dp": "client", "dp_adaptive_quantile": 0.5},
            "needs each client's update norm",
        ),
    ],
)
def test_impossible_combinations_are_one_clear_error(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        ExperimentConfig(**{**SMALL, "workers": 4, **options})


def test_attackers_follow_the_seed_and_do_not_shift_client_sampling() -> None:
    # Prepare
    cfgs = [
        ExperimentConfig(**{**TEN, "attack": "noise", "attackers": 3, "seed": s}) for s in (0, 0, 1)
    ]

    # Execute
    chosen = [attacker_indices(cfg) for cfg in cfgs]
    defence = Defence(cfgs[0], [f"w{i}" for i in range(10)])

    # Assert
    assert chosen[0] == chosen[1] and chosen[0] != chosen[2] and len(chosen[0]) == 3
    assert defence.attackers == tuple(f"w{i}" for i in chosen[0])


def test_a_label_flipping_worker_holds_flipped_labels() -> None:
    # Prepare
    args: dict[str, Any] = {
        "partitioning": Partitioning("fashion-mnist", "iid", 4, 0, 400),
        "index": 1,
        "data_dir": None,
    }

    # Execute
    honest = WorkerCore.with_partition("a", **args)
    poisoned = WorkerCore.with_partition("b", **args, label_flip=True)

    # Assert
    y_honest = honest._objects[TRAIN_Y_ID]
    y_poisoned = poisoned._objects[TRAIN_Y_ID]
    assert isinstance(y_honest, torch.Tensor) and isinstance(y_poisoned, torch.Tensor)
    assert torch.equal(y_poisoned, 9 - y_honest)


def test_coordinator_split_flips_only_the_poisoned_workers_shards() -> None:
    # Prepare
    cfg = ExperimentConfig(**{**SMALL, "workers": 4, "levels": "2"})
    train = load_train_set.fn(cfg)
    shards = partition_train_set.fn(cfg, train.y)

    # Execute
    workers = launch_virtual_workers.fn(cfg, train=train, shards=shards, poisoned=frozenset({2}))

    # Assert
    for index, worker in enumerate(workers):
        labels = worker.core._objects[TRAIN_Y_ID]
        expected = train.y[shards[index]]
        assert torch.equal(labels, 9 - expected if index == 2 else expected)


def test_client_dp_settings_reach_the_workers_training_config() -> None:
    client = ExperimentConfig(**{**SMALL, "levels": "2", "dp": "client", "dp_clip": 0.5})
    sample = ExperimentConfig(**{**SMALL, "levels": "2", "dp": "sample", "dp_noise": 1.1})
    assert ClientSettings.of(client).train.update_clip == 0.5
    assert ClientSettings.of(client).train.dp_clip == 0.0
    assert ClientSettings.of(sample).train.dp_clip == 1.0
    assert ClientSettings.of(sample).train.dp_noise == 1.1


def test_median_flags_sign_flippers_that_fedavg_follows(mlflow_uri: str) -> None:
    # Prepare: 10 clients, 2 of them flip the sign of their updates.
    attacked = {**TEN, "levels": "2", "attack": "sign-flip", "attackers": 2}

    # Execute
    fedavg = benchmark_flow(ExperimentConfig(**attacked).to_dict())
    median = benchmark_flow(ExperimentConfig(**attacked, aggregator="median").to_dict())

    # Assert: every round the median flags exactly the attackers.
    run = _child(median)
    assert run.data.params["aggregator"] == "median"
    assert run.data.params["attack"] == "sign-flip" and run.data.params["attackers"] == "2"
    assert _history(run.info.run_id, "flag_recall") == [1.0, 1.0]
    assert _history(run.info.run_id, "flag_precision") == [1.0, 1.0]
    assert _history(run.info.run_id, "flagged_clients") == [2.0, 2.0]
    assert _history(run.info.run_id, "updates_held") == [10.0, 10.0]  # a median needs all
    assert "flag_recall" in _child(fedavg).data.metrics  # FedAvg scores clients too
    assert median["levels"][0]["final_accuracy"] > fedavg["levels"][0]["final_accuracy"]
    flags = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/flags.json")
    assert len(flags) == 2 and all(r["flagged"] == r["attackers"] for r in flags)
    assert all(len(r["scores"]) == 10 for r in flags)


def test_streamed_dp_fedavg_is_the_aggregate_of_the_held_updates() -> None:
    # Prepare: 5 clients around a global state; one moved past the clip (its
    # worker did not clip), one diverged (NaN), the others inside the ball.
    # --dp-noise-seed makes two Defences draw the same noise (the default CSPRNG would not).
    cfg = ExperimentConfig(
        **{**TEN, "workers": 5}, levels="3", dp="client", dp_clip=0.5, dp_noise_seed=0
    )
    g = torch.Generator().manual_seed(0)
    global_state = {"w": torch.randn(300, generator=g), "steps": torch.tensor(7)}
    moves = [0.1, 3.0, 0.2, float("nan"), 0.4]
    updates = []
    for index, size in enumerate(moves):
        direction = torch.randn(300, generator=g)
        state = {"w": global_state["w"] + direction / direction.norm() * size}
        state["steps"] = torch.tensor(9)
        updates.append(ClientUpdate(f"c{index}", state, 10 + index, 0.0))
    ids = [u.client_id for u in updates]

    # Execute: the streamed fold (as a batch does it), then the noise on its mean;
    # and DP-FedAvg holding every update, with the same seed.
    strategy = Defence(cfg, ids).strategy
    assert strategy.fold is not None
    folded = WeightedSum()
    for update in updates:
        folded.add(*strategy.fold.weighed(update, global_state))
    aggregate = strategy.start_round(global_state, folded=True)
    aggregate.take([], folded)
    streamed = aggregate.finish()
    held = Defence(cfg, ids).strategy.aggregate(global_state, updates)

    # Assert: the same model — weight 1 each, the long move clipped to 0.5, the
    # NaN counted as no move, the same noise — to one float32 ulp of the weights'
    # scale (≈ 1: the streamed fold holds clipped float32 states, and a weight
    # that cancels to ≈ 0 keeps that absolute error); and the clients' counters.
    torch.testing.assert_close(streamed["w"], held["w"], rtol=2**-23, atol=2**-23)
    assert torch.equal(streamed["steps"], held["steps"])


def test_each_dp_mode_is_accounted_with_the_sampling_it_uses() -> None:
    # Prepare: client DP samples m = 3 of K = 10 clients (fixed size); sample DP
    # trains each client with Poisson batches at q = B/N of its partition.
    client = ExperimentConfig(**TEN, levels="2", dp="client", fraction=0.3, dp_noise=1.5)
    sample = ExperimentConfig(**{**TEN, "workers": 2}, levels="2", dp="sample")
    ids = [str(i) for i in range(10)]
    clients, samples = Defence(client, ids), Defence(sample, ids[:2])
    cohort = clients.strategy.sample_clients(ids, client.fraction, torch.Generator())

    # Execute
    clients.after_round([ClientUpdate(c, {}, 1, 0.0) for c in cohort])
    samples.after_round([ClientUpdate(c, {}, 1, 0.0) for c in ids[:2]])

    # Assert
    accountant = clients.accountants["clients"]
    assert len(cohort) == 3 and accountant.sampling == "fixed-size"
    assert accountant.history == [(1.5, 0.3, 1)]
    for cid in ids[:2]:
        n = samples.sizes[cid]
        assert samples.accountants[cid].sampling == "poisson"
        assert samples.accountants[cid].history == [(1.0, 32 / n, n // 32)]


def test_client_dp_logs_epsilon_and_stops_at_the_budget(mlflow_uri: str) -> None:
    # Prepare: z = 2, every client every round; round 2 would pass ε = 5 (replace-one
    # adjacency: σ = z/2 = 1, ε ≈ 4.75 after round 1, 7.1 after round 2).
    cfg = ExperimentConfig(
        **{**TEN, "rounds": 4},
        levels="2",
        dp="client",
        dp_noise=2.0,
        dp_clip=1.0,
        dp_target_epsilon=5.0,
    )

    # Execute
    result = benchmark_flow(cfg.to_dict())

    # Assert: ε grows each round, never past the target, and the stop is on record.
    run = _child(result)
    epsilons = _history(run.info.run_id, "dp_epsilon")
    assert 1 <= len(epsilons) < 4
    assert epsilons == sorted(epsilons) and epsilons[-1] <= 5.0
    assert "privacy budget: round" in run.data.tags["dp_stopped"]
    assert run.data.params["dp"] == "client" and run.data.params["dp_target_epsilon"] == "5.0"
    assert run.data.tags["fedsim.dp.private"] == "true"
    assert "dp_noise_seed" not in run.data.params  # unset: no param, not the string "None"


def test_client_dp_under_secure_aggregation_noises_the_opened_average(mlflow_uri: str) -> None:
    # Prepare: the same clipped clients, once plain and once secret-shared; z = 0
    # makes the two averages equal, so the secure path's clipping shows.
    base = {**SMALL, "workers": 3, "levels": "2,2:secure", "dp": "client", "dp_clip": 0.05}

    # Execute
    exact = benchmark_flow(ExperimentConfig(**base, dp_noise=0.0).to_dict())
    noisy = benchmark_flow(ExperimentConfig(**base, dp_noise=5.0).to_dict())

    # Assert: without noise secure = plain (the workers clipped); with a lot of
    # noise the secure level's model moves (noise added after the opening).
    plain, secure = exact["levels"]
    assert secure["final_accuracy"] == pytest.approx(plain["final_accuracy"], abs=0.01)
    assert _history(secure["run_id"], "dp_epsilon") == []  # z = 0: ε = ∞, not logged
    noisy_secure = noisy["levels"][1]
    # The loss, not the accuracy: both models sit near chance after two tiny rounds,
    # and fresh CSPRNG noise once left the noisy one 0.5 points ahead. Noise of
    # std z·S/n per coordinate over every weight lifts the loss far above 2.25.
    assert noisy_secure["final_loss"] > secure["final_loss"] + 1.0
    assert _history(noisy_secure["run_id"], "dp_epsilon")[-1] > 0


def test_sample_dp_trains_with_dp_sgd_and_accounts_per_client(mlflow_uri: str) -> None:
    # Prepare
    cfg = ExperimentConfig(
        **{**SMALL, "workers": 2, "levels": "2"}, dp="sample", dp_noise=1.0, dp_clip=1.0
    )

    # Execute
    result = benchmark_flow(cfg.to_dict())

    # Assert: ε after each round, growing, from Opacus's accountant.
    epsilons = _history(result["levels"][0]["run_id"], "dp_epsilon")
    assert len(epsilons) == 2 and 0 < epsilons[0] < epsilons[1]
