"""End-to-end: the benchmark flow through the real Prefect engine into a real MLflow store."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from fl.data import load_split
from fl.models import build_model, get_state, set_state
from fl.partition import parse_partition, partition_indices
from fl.training import TrainConfig, evaluate, train_local
from fl.weighted_sum import weighted_average
from flows.benchmark import benchmark_flow
from flows.config import ExperimentConfig
from flows.round_loop import LevelSummary, slowdown
from flows.rounds.clients import client_seed

pytestmark = pytest.mark.usefixtures("prefect_harness")

SMALL: dict[str, Any] = {
    "levels": "baseline,1,2,3",
    "model": "mlp",
    "workers": 3,
    "rounds": 2,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.05,
    "train_samples": 600,
    "test_samples": 300,
    "experiment": "flow-test",
}

ROUND_METRICS = {
    "test_accuracy",
    "test_loss",
    "train_loss",
    "round_seconds",
    "bytes_sent",
    "bytes_received",
}
FINAL_METRICS = {
    "final_accuracy",
    "train_seconds",
    "wall_seconds",
    "slowdown_vs_baseline",
    "bytes_total",
    "prefect_seconds",
    "samples_trained",
}
PARAMS = {
    "level",
    "dataset",
    "model",
    "partition",
    "workers",
    "rounds",
    "epochs",
    "batch_size",
    "lr",
    "fraction",
    "seed",
    "aggregation",
}
# Task calls per level with 2 rounds: set-up tasks + per-round tasks.
TASK_CALLS = {
    # Every round ends in one "aggregate" task (the round's aggregate finishes).
    "baseline": 2 + 2 * 3,  # load train, load test; train + aggregate + evaluate
    "sequential": 4 + 2 * 3,  # load test, load train, partition, launch; train + agg. + eval.
    # ... 2 client batches (--round-tasks 2, FedAvg folded inside them) + aggregate + evaluate
    "federated": 4 + 2 * 4,
    # load test, prepare clients (read the data where the batches will run)
    "decentralized": 2 + 2 * 4,
}


def test_benchmark_logs_parent_and_one_child_per_level(mlflow_uri: str) -> None:
    # Prepare
    cfg = ExperimentConfig(**SMALL)

    # Execute
    result = benchmark_flow(cfg.to_dict())

    # Assert
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("flow-test")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.info.run_id == result["parent_run_id"]]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result["parent_run_id"]]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].data.tags["mlflow.note.content"].startswith("fedsim benchmark")
    names = sorted(r.info.run_name for r in children)
    assert names == ["L0 baseline", "L1 sequential", "L2 federated", "L3 decentralized"]
    baseline_seconds = next(
        r.data.metrics["train_seconds"] for r in children if r.info.run_name == "L0 baseline"
    )
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["level"] == run.info.run_name.split(" ", 1)[1]
        assert "version.torch" in run.data.tags and "git_commit" in run.data.tags
        assert set(run.data.params) >= PARAMS
        assert run.data.params["workers"] == "3" and run.data.params["batch_size"] == "32"
        assert set(run.data.metrics) >= FINAL_METRICS | ROUND_METRICS
        for name in ROUND_METRICS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
            assert steps == [1, 2], name
        assert 0.3 < run.data.metrics["final_accuracy"] <= 1.0  # chance is 0.1
        expected = run.data.metrics["train_seconds"] / baseline_seconds
        assert run.data.metrics["slowdown_vs_baseline"] == pytest.approx(expected)
    by_level = {s["level"]: s for s in result["levels"]}
    assert by_level["baseline"]["bytes_total"] == 0
    for level, summary in by_level.items():
        assert summary["task_calls"] == TASK_CALLS[level]
        assert summary["prefect_seconds"] > 0  # subflow set-up and task calls cost something
        assert summary["samples_trained"] == 600 * 2  # C = 1: every level, all data, twice
    for level in ("sequential", "federated", "decentralized"):
        # Every round moves at least the model (199,210 float32) out and back per worker.
        assert by_level[level]["bytes_total"] > 2 * 2 * 3 * 4 * 199_210
    # Level 2 ships the shards (600 x 784 float32 + labels); level 3 loads them in place.
    shards_bytes = 600 * 784 * 4
    assert by_level["federated"]["bytes_total"] - by_level["decentralized"]["bytes_total"] > (
        shards_bytes
    )
    # The parent is named after its levels and holds each level's summary metrics.
    assert parent[0].info.run_name == "levels baseline,sequential,federated,decentralized (quick)"
    for run in children:
        key = run.data.tags["level"]
        for name in ("final_accuracy", "train_seconds", "slowdown_vs_baseline"):
            assert parent[0].data.metrics[f"{key}/{name}"] == run.data.metrics[name]
    # The data each run used, as MLflow dataset inputs (training and evaluation).
    for run in (parent[0], *children):
        inputs = {
            d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"]
            for d in run.inputs.dataset_inputs
        }
        assert inputs == {"fashion-mnist-train": "training", "fashion-mnist-test": "evaluation"}
    # Prefect names each flow run after the experiment and level, each training task
    # after its round.
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # run logs go to the API in the background
    with get_client(sync_client=True) as prefect:
        flow_names = {f.name for f in prefect.read_flow_runs()}
        task_names = {t.name for t in prefect.read_task_runs()}
        messages = [entry.message for entry in prefect.read_logs()]
    # ... and logs a line per round, which the Prefect UI shows as the run's progress.
    assert any(m.startswith("round 2/2: test accuracy") for m in messages), messages[-10:]
    names = {
        "flow-test · L2 federated",
        "flow-test · levels baseline,sequential,federated,decentralized",
    }
    assert names <= flow_names
    assert {"round 1", "round 2"} <= task_names  # level 1's
    assert any(name.startswith("round 2 · clients ") for name in task_names)  # levels 2-3


def test_same_seed_same_accuracies_and_fedavg_matches_reference(mlflow_uri: str) -> None:
    # Prepare
    cfg = ExperimentConfig(**{**SMALL, "levels": "1,2,3", "rounds": 1})

    # Execute
    first = benchmark_flow(cfg.to_dict())
    second = benchmark_flow(cfg.to_dict())

    # Assert: bitwise-reproducible accuracies, and levels 2 and 3 agree exactly.
    accs = [[s["final_accuracy"] for s in r["levels"]] for r in (first, second)]
    assert accs[0] == accs[1]
    _sequential, federated, decentralized = accs[0]
    assert federated == decentralized
    # Independent reference: one FedAvg round by hand with fl's functions.
    train = load_split("fashion-mnist", train=True, limit=600)
    test = load_split("fashion-mnist", train=False, limit=300)
    shards = partition_indices(parse_partition("iid"), train.y, 3, 0)
    start = get_state(build_model("mlp", seed=0))
    states, weights = [], []
    for index, shard in enumerate(shards):
        model = build_model("mlp", seed=0)
        set_state(model, start)
        config = TrainConfig(epochs=1, batch_size=32, lr=0.05)
        generator = torch.Generator().manual_seed(client_seed(0, 1, index))
        train_local(model, train.subset(shard), config, generator)
        states.append(get_state(model))
        weights.append(float(len(shard)))
    model = build_model("mlp", seed=0)
    set_state(model, weighted_average(states, weights))
    assert evaluate(model, test).accuracy == federated


def test_slowdown_compares_equal_work() -> None:
    # Prepare: a level that trained on half the samples (C = 0.5) in 6 s,
    # against a baseline that trained on all of them in 10 s.
    summary = LevelSummary(
        level="federated",
        number=2,
        run_id="r",
        run_name="L2 federated",
        final_accuracy=0.9,
        final_loss=0.3,
        train_seconds=6.0,
        samples_trained=500,
        bytes_total=0,
    )

    # Execute
    ratio = slowdown(summary, {"train_seconds": 10.0, "samples_trained": 1000})

    # Assert: 6 s for 500 samples vs 5 s for the same 500 on the baseline.
    assert ratio == pytest.approx(1.2)
