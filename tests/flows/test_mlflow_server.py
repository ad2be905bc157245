"""A small benchmark tracked on a real MLflow server, checked through its REST API.

``mlflow server`` on a free loopback port over a temporary SQLite store and
artifact folder (artifacts proxied through the server, as with a remote one),
stopped afterwards with its workers. The flow runs in this process against the
session's Prefect test server; only MLFLOW_TRACKING_URI points at the server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.benchmark import benchmark_flow
from flows.config import ExperimentConfig
from tests.ports import free_port

SMALL = ExperimentConfig(
    levels="baseline,1,2",
    model="mlp",
    workers=2,
    rounds=2,
    epochs=1,
    batch_size=32,
    lr=0.05,
    train_samples=400,
    test_samples=200,
    experiment="server-test",
)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1:<free port>; yields its base URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'm.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        with contextlib.suppress(ProcessLookupError):  # uvicorn workers, if any are left
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _runs(api: httpx.Client, experiment: str) -> list[dict[str, Any]]:
    found = api.get("experiments/get-by-name", params={"experiment_name": experiment})
    found.raise_for_status()
    experiment_id = found.json()["experiment"]["experiment_id"]
    search = api.post("runs/search", json={"experiment_ids": [experiment_id], "max_results": 100})
    search.raise_for_status()
    return list(search.json()["runs"])


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}


def _metrics(run: dict[str, Any]) -> dict[str, float]:
    return {metric["key"]: metric["value"] for metric in run["data"].get("metrics", [])}


@pytest.mark.usefixtures("prefect_harness")
def test_benchmark_runs_and_metrics_reach_the_mlflow_server(
    mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)

    # Execute
    result = benchmark_flow(SMALL.to_dict())

    # Assert: one parent with a description, one child per level, read back over REST.
    with httpx.Client(base_url=f"{mlflow_server}/api/2.0/mlflow/", timeout=30) as api:
        runs = _runs(api, "server-test")
        by_id = {run["info"]["run_id"]: run for run in runs}
        parent = by_id[result["parent_run_id"]]
        assert "mlflow.parentRunId" not in _tags(parent)
        description = _tags(parent)["mlflow.note.content"]  # what was run, shown in the UI
        assert "L0 baseline, L1 sequential, L2 federated" in description
        children = {run["info"]["run_name"]: run for run in runs if run is not parent}
        assert set(children) == {"L0 baseline", "L1 sequential", "L2 federated"}
        for name, child in children.items():
            tags = _tags(child)
            assert tags["mlflow.parentRunId"] == result["parent_run_id"]
            assert tags["level"] == name.split(" ", 1)[1]
            metrics = _metrics(child)
            assert 0 <= metrics["final_accuracy"] <= 1
            assert 0 <= metrics["test_accuracy"] <= 1
            assert child["info"]["status"] == "FINISHED"
            history = api.get(
                "metrics/get-history",
                params={"run_id": child["info"]["run_id"], "metric_key": "test_accuracy"},
            ).json()["metrics"]
            assert sorted(m["step"] for m in history) == list(range(1, SMALL.rounds + 1)), name
        summary = {s["run_name"]: s for s in result["levels"]}
        assert _metrics(children["L2 federated"])["final_accuracy"] == pytest.approx(
            summary["L2 federated"]["final_accuracy"]
        )
