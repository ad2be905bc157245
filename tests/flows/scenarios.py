"""What flow tests share: small run configurations and helpers over processes and MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from flows.tracking import tracking_uri
from workers.lifetime import PARENT_PID_ENV

SMALL: dict[str, Any] = {
    "model": "mlp",
    "workers": 2,
    "rounds": 2,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.05,
    "train_samples": 400,
    "test_samples": 200,
    "experiment": "ws-test",
}


def started_by(parent: int) -> list[int]:
    """Live (non-zombie) processes that ``parent`` started to die with it
    (level-4 workers, Prefect's temporary API server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if f"{PARENT_PID_ENV}={parent}".encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def launched_workers(parent: int) -> list[int]:
    """The level-4 worker processes among them."""
    found = []
    for pid in started_by(parent):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"\0worker\0serve\0" in command:
            found.append(pid)
    return found


# A thousand clients of two samples each: one batch of SGD per client and round.
THOUSAND: dict[str, Any] = {
    "levels": "2,3",
    "model": "mlp",
    "workers": 1000,
    "fraction": 0.1,
    "rounds": 2,
    "epochs": 1,
    "batch_size": 2,
    "lr": 0.05,
    "train_samples": 2000,
    "test_samples": 200,
    "experiment": "scale-test",
}


def level_runs(parent_run_id: str) -> dict[str, Any]:
    client = MlflowClient(tracking_uri())
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    return {run.data.tags["level"]: run for run in runs}


def history(run_id: str, key: str) -> list[float]:
    metrics = MlflowClient(tracking_uri()).get_metric_history(run_id, key)
    return [m.value for m in sorted(metrics, key=lambda m: m.step)]


def sampled_sets(run_id: str, tmp_path: Path) -> list[list[int]]:
    path = MlflowClient(tracking_uri()).download_artifacts(run_id, "clients.json", str(tmp_path))
    return [entry["clients"] for entry in json.loads(Path(path).read_text())]


def assert_same_level_3(dask_parent: str, local_parent: str, tmp_path: Path) -> None:
    """Level 3 of a Dask run equals the in-process run's: every round's loss, accuracy
    and bytes sent, bit for bit, and the sampled clients."""
    dask_run = level_runs(dask_parent)["decentralized"]
    local_run = level_runs(local_parent)["decentralized"]
    assert dask_run.data.params["task_runner"] == "dask"
    assert local_run.data.params["task_runner"] == "local"
    # (bytes_received differs by a few bytes: replies carry timings as JSON floats.)
    for key in ("test_loss", "test_accuracy", "train_loss", "bytes_sent"):
        assert history(dask_run.info.run_id, key) == history(local_run.info.run_id, key), key
    assert sampled_sets(dask_run.info.run_id, tmp_path / "dask") == sampled_sets(
        local_run.info.run_id, tmp_path / "local"
    )
