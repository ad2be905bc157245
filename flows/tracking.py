"""MLflow tracking for benchmark runs: one parent run, one child run per level.

Layout and names are the contract of DESIGN.md ("MLflow"). Metrics are logged
in batches (one ``log_batch`` per round): on SQLite one call per value costs
~4 ms and over HTTP ~56 ms, which would otherwise show up in the slowdown.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

__all__ = ["DEFAULT_TRACKING_URI", "BenchmarkTracker", "environment_tags", "tracking_uri"]

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
_PACKAGES = ("fedsim", "torch", "torchvision", "prefect", "mlflow", "numpy")


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the project's SQLite store under ``mlruns/``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def environment_tags() -> dict[str, str]:
    """Git commit, dirty flag and package versions: what reproduces a run."""
    tags = {"python_version": platform.python_version()}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
        status = _git("status", "--porcelain", "--untracked-files=no")
        tags["git_dirty"] = str(bool(status)).lower()
    for package in _PACKAGES:
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return tags


def _now_ms() -> int:
    return int(time.time() * 1000)


class BenchmarkTracker:
    """Creates the parent run of one ``fedsim run`` and the child run per level."""

    def __init__(self, experiment: str, *, uri: str | None = None) -> None:
        self.client = MlflowClient(tracking_uri=uri or tracking_uri())
        self.experiment_id = self._experiment_id(experiment)
        self.parent_id: str | None = None

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        artifact_location = None
        uri = self.client.tracking_uri
        if uri.startswith("sqlite:///"):
            # Artifacts beside the SQLite store, under mlruns/ (DESIGN.md).
            db_path = Path(uri.removeprefix("sqlite:///")).resolve()
            artifact_location = (db_path.parent / "artifacts").as_uri()
        return str(self.client.create_experiment(name, artifact_location=artifact_location))

    def start_parent(self, name: str, params: Mapping[str, str], description: str) -> str:
        tags = {**environment_tags(), "mlflow.note.content": description, "kind": "benchmark"}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.parent_id = run.info.run_id
        self.log_params(self.parent_id, params)
        return self.parent_id

    def start_level(self, run_name: str, level: str, params: Mapping[str, str]) -> str:
        tags = {**environment_tags(), "level": level, "kind": "level"}
        if self.parent_id is not None:
            tags["mlflow.parentRunId"] = self.parent_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.log_params(run.info.run_id, params)
        return str(run.info.run_id)

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        stamp = _now_ms()
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=batch)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_json(self, run_id: str, data: object, name: str) -> None:
        """``data`` as the JSON artifact ``name`` of the run."""
        self.client.log_dict(run_id, data, name)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)
