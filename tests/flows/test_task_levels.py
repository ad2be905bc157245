"""A task at the levels and aggregations that run in this process, through the real
benchmark flow: the same accuracy where the rounds are the same, DP and robust
aggregation on a task's own loss, and a task that diverges stops its level with
one error naming it while the rounds before stay logged."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from fl.tasks import TaskError
from flows.benchmark import benchmark_flow
from flows.config import ExperimentConfig

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

ROOT = Path(__file__).resolve().parents[2]
TABULAR = f"{ROOT / 'examples' / 'tabular_logreg.py'}:task"
SMALL = {"workers": 3, "rounds": 2, "lr": 0.05, "batch_size": 16}
SAMPLES = {"train_samples": None, "test_samples": None}


def _accuracies(result: dict[str, Any]) -> dict[str, float]:
    return {s["run_name"]: s["final_accuracy"] for s in result["levels"]}


def test_a_task_at_every_in_process_level_and_aggregation(mlflow_uri: str) -> None:
    levels = "baseline,1,2,2:secure,2:he,3"
    result = benchmark_flow(
        ExperimentConfig(task=TABULAR, levels=levels, **SMALL, **SAMPLES).to_dict()
    )
    accuracy = _accuracies(result)
    assert len(accuracy) == 6 and min(accuracy.values()) > 0.85, accuracy  # 63% is a guess
    assert accuracy["L2 federated"] == accuracy["L3 decentralized"]
    # Secure sums in fixed point, CKKS approximately: within a test row of plain.
    for private in ("L2 federated (secure)", "L2 federated (he)"):
        assert abs(accuracy[private] - accuracy["L2 federated"]) <= 1 / 114 + 1e-9, accuracy
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("fedsim").experiment_id]  # type: ignore[union-attr]
    )
    assert {r.data.params.get("task") for r in runs} == {TABULAR}


@pytest.mark.parametrize(
    "options",
    [
        {"levels": "2,3", "dp": "sample", "dp_noise": 0.5, "dp_clip": 1.0},  # Opacus, BCE loss
        {"levels": "2", "dp": "client", "dp_noise": 0.1, "dp_clip": 5.0},
        {"levels": "2", "strategy": "median", "attack": "label-flip", "attackers": 1},
    ],
)
def test_dp_and_robust_aggregation_train_a_task(mlflow_uri: str, options: dict[str, Any]) -> None:
    result = benchmark_flow(
        ExperimentConfig(task=TABULAR, **{**SMALL, **SAMPLES, **options}).to_dict()
    )
    accuracy = _accuracies(result)
    assert accuracy and min(accuracy.values()) > 0.7, accuracy


DIVERGES = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from fl.tasks import Task

    calls = 0

    def data(split):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        x = torch.randn(60, 4, generator=g)
        return x, (x[:, 0] > 0).to(torch.int64)

    def loss(out, y):
        global calls
        if torch.is_grad_enabled():  # training steps, not evaluation
            calls += 1
            if calls > 3:  # round 1: three clients of 20 rows, one batch each
                return F.cross_entropy(out, y) * float("nan")
        return F.cross_entropy(out, y)

    task = Task(model=lambda: nn.Linear(4, 2), data=data, loss=loss)
""")


def test_a_diverging_task_stops_its_level_and_keeps_what_was_logged(
    mlflow_uri: str, tmp_path: Path
) -> None:
    (tmp_path / "diverges.py").write_text(DIVERGES)
    reference = f"{tmp_path / 'diverges.py'}:task"
    cfg = ExperimentConfig(
        task=reference, levels="2", **{**SMALL, "rounds": 3, "batch_size": 32}, **SAMPLES
    )

    with pytest.raises(TaskError, match=f"task '{reference}' diverged in round 2"):
        benchmark_flow(cfg.to_dict())

    client = MlflowClient()
    experiment = client.get_experiment_by_name("fedsim")
    assert experiment is not None
    (child,) = [
        r for r in client.search_runs([experiment.experiment_id]) if "level" in r.data.params
    ]
    assert child.info.status == "FAILED"
    history = client.get_metric_history(child.info.run_id, "test_accuracy")
    assert [m.step for m in history] == [1]  # round 1, logged before round 2 diverged
