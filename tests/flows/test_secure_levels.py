"""``--aggregation secure`` end to end: real Prefect, real MLflow, virtual and process workers."""

from __future__ import annotations

import os
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from fl.errors import ConfigError
from flows.benchmark import benchmark_flow
from flows.config import ExperimentConfig, parse_levels
from tests.flows.test_websocket_levels import SMALL, launched_workers

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _children(parent: str) -> dict[str, Any]:
    client = MlflowClient()
    run = client.get_run(parent)
    runs = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    return {r.info.run_name: r for r in runs}


def test_secure_level2_matches_plain_and_logs_its_costs(mlflow_uri: str) -> None:
    # Prepare: three workers, a committee of two.
    cfg = ExperimentConfig(**{**SMALL, "workers": 3, "committee": 2, "levels": "2,2:secure"})

    # Execute
    result = benchmark_flow(cfg.to_dict())

    # Assert: the opened average is FedAvg's to ~1e-5 per weight, so the models
    # classify the test set alike; the secure run logs its protocol costs.
    plain, secure = result["levels"]
    assert secure["run_name"] == "L2 federated (secure)"
    assert secure["final_accuracy"] == pytest.approx(plain["final_accuracy"], abs=0.005)
    runs = _children(result["parent_run_id"])
    run = runs["L2 federated (secure)"]
    assert run.data.params["aggregation"] == "secure"
    assert run.data.params["committee"] == "2"
    assert runs["L2 federated"].data.params["aggregation"] == "plain"
    for metric in ("sharing_seconds", "opening_seconds", "relay_seconds", "secagg_seconds"):
        assert run.data.metrics[metric] > 0
    assert secure["bytes_total"] > plain["bytes_total"]


def test_secure_level4_over_worker_processes(mlflow_uri: str) -> None:
    # Prepare
    cfg = ExperimentConfig(**{**SMALL, "workers": 3, "levels": "3,4:secure"})

    # Execute
    result = benchmark_flow(cfg.to_dict())

    # Assert: same model as level 3 up to float rounding and the encoding.
    level3, level4 = result["levels"]
    assert level4["run_name"] == "L4 websocket-local (secure)"
    assert level4["final_accuracy"] == pytest.approx(level3["final_accuracy"], abs=0.02)
    assert launched_workers(os.getpid()) == []


def test_secure_variants_parse_and_bad_ones_are_one_clear_error() -> None:
    levels = parse_levels("baseline,2:secure,2,federated,1", aggregation="plain")
    assert [lv.key for lv in levels] == ["baseline", "sequential", "federated", "federated:secure"]
    with pytest.raises(ConfigError, match="applies to levels 2-5"):
        parse_levels("1:secure")
    with pytest.raises(ConfigError, match="unknown aggregation"):
        parse_levels("2:homomorphic")
    with pytest.raises(ConfigError, match="--mac"):
        ExperimentConfig(levels="2", mac=True)
    with pytest.raises(ConfigError, match="--committee must be >= 2"):
        ExperimentConfig(levels="2", aggregation="secure", committee=1)
