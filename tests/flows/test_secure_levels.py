"""``--aggregation secure`` end to end: real Prefect, real MLflow, virtual and process workers."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from fl.errors import ConfigError
from flows.benchmark import benchmark_flow
from flows.config import ExperimentConfig
from flows.level import parse_levels
from mpc.errors import MPCError
from mpc.field import P
from tests.flows.scenarios import SMALL, launched_workers
from workers.codec import Value
from workers.virtual import VirtualWorker

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


@pytest.mark.parametrize("mac", [False, True])
def test_secure_level4_over_worker_processes(mlflow_uri: str, mac: bool) -> None:
    # Prepare: with --mac two of the three workers sit on the committee, one deals.
    cfg = ExperimentConfig(**{**SMALL, "workers": 3, "levels": "3,4:secure", "mac": mac})

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


def test_mac_run_matches_plain_and_a_tampered_round_writes_no_model(
    mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a --mac run, then the same run in which committee members alter
    # one element of the share they reveal (a malicious worker).
    cfg = ExperimentConfig(**{**SMALL, "workers": 3, "levels": "2,2:secure", "mac": True})
    honest = benchmark_flow(cfg.to_dict())
    original = VirtualWorker.party_op

    def lying(self: VirtualWorker, op: str, **args: Value) -> dict[str, Value]:
        values = original(self, op, **args)
        if op == "secagg.mac.reveal":
            share = values["sum_share"]
            assert isinstance(share, torch.Tensor)
            share = share.clone()
            share[0] = (int(share[0]) + 1) % P
            values = {**values, "sum_share": share}
        return values

    monkeypatch.setattr(VirtualWorker, "party_op", lying)

    # Execute
    with pytest.raises(MPCError, match="MAC check failed"):
        benchmark_flow({**cfg.to_dict(), "levels": "2:secure"})

    # Assert: the honest run equals plain FedAvg; the tampered level failed in its
    # first round, before any model was evaluated.
    plain, secure = honest["levels"]
    assert secure["final_accuracy"] == pytest.approx(plain["final_accuracy"], abs=0.005)
    client = MlflowClient()
    failed = [
        r
        for r in client.search_runs([client.get_experiment_by_name("ws-test").experiment_id])
        if r.info.run_name == "L2 federated (secure)" and r.info.status == "FAILED"
    ]
    assert len(failed) == 1
    assert "test_accuracy" not in failed[0].data.metrics
    assert failed[0].data.params["mac"] == "true"


def test_encrypted_eval_level_logs_both_accuracies(mlflow_uri: str) -> None:
    # Prepare: a small test set; the level trains mpc-cnn itself.
    cfg = ExperimentConfig(**{**SMALL, "levels": "encrypted-eval", "test_samples": 120})

    # Execute
    result = benchmark_flow(cfg.to_dict())

    # Assert: encrypted predictions agree with plaintext ones (1 image of 120 at most,
    # for the rare truncation error) and the MLflow run has the metrics.
    (summary,) = result["levels"]
    assert summary["run_name"] == "L6 encrypted-eval"
    assert abs(summary["final_accuracy"] - summary["plaintext_accuracy"]) <= 1 / 120
    run = _children(result["parent_run_id"])["L6 encrypted-eval"]
    metrics = run.data.metrics
    assert metrics["final_accuracy"] == summary["final_accuracy"]
    assert metrics["plaintext_accuracy"] == summary["plaintext_accuracy"]
    assert metrics["slowdown_vs_plaintext"] > 1
    assert metrics["images_per_second"] > 0
    assert run.data.tags["level"] == "encrypted-eval"


def test_he_level2_matches_plain_and_logs_its_costs(mlflow_uri: str) -> None:
    # Prepare: CKKS aggregation of level 2 next to the plain run.
    cfg = ExperimentConfig(**{**SMALL, "workers": 3, "levels": "2,2:he"})

    # Execute
    result = benchmark_flow(cfg.to_dict())

    # Assert: the released average is FedAvg's plus the key holder's flooding
    # noise (σ/Σn ≈ 1e-5 per weight at this size); round 2 trains from that
    # model, so a few of the 200 test predictions may differ (3 did once). The
    # he run logs its costs and the flood.
    plain, he = result["levels"]
    assert he["run_name"] == "L2 federated (he)"
    assert he["final_accuracy"] == pytest.approx(plain["final_accuracy"], abs=0.03)
    run = _children(result["parent_run_id"])["L2 federated (he)"]
    assert run.data.params["aggregation"] == "he"
    for metric in (
        "he_encrypt_seconds",
        "he_aggregate_seconds",
        "he_decrypt_seconds",
        "he_flood_sigma",
    ):
        assert run.data.metrics[metric] > 0
    assert run.data.metrics["ciphertext_bytes"] > 3 * 199_210 * 8  # CKKS expands the update
