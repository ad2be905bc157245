"""MLflow tracking for benchmark runs: one parent run, one child run per level.

Layout and names are the contract of docs/operations.md ("MLflow"). Metrics are logged
in batches (one ``log_batch`` per round): one call per value is one write to the
store (an HTTP request to a server), whose cost would otherwise show up in the
slowdown (docs/operations.md, "MLflow").
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.tracking import MlflowClient

from fl.data import resolve_data_root
from fl.errors import FedsimError
from fl.task_fingerprint import data_digest

if TYPE_CHECKING:
    from flows.config import ExperimentConfig

__all__ = [
    "DEFAULT_TRACKING_URI",
    "BenchmarkTracker",
    "environment_tags",
    "status_after",
    "tracking_uri",
]

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


# Which process owns a RUNNING run: a run whose owner is gone (kill -9, a
# power cut) can then be closed by the next `fedsim run` on the same host. The
# start time tells a live owner from a later process that got the same pid.
_HOST_TAG, _PID_TAG, _STARTED_TAG = "fedsim.host", "fedsim.pid", "fedsim.process_started"


def _owner_tags() -> dict[str, str]:
    me = psutil.Process()
    return {
        _HOST_TAG: socket.gethostname(),
        _PID_TAG: str(me.pid),
        _STARTED_TAG: f"{me.create_time():.2f}",
    }


def _owner_alive(tags: Mapping[str, str]) -> bool:
    try:
        owner = psutil.Process(int(tags[_PID_TAG]))
        return f"{owner.create_time():.2f}" == tags.get(_STARTED_TAG)
    except psutil.AccessDenied:  # another user's live process: not ours to judge
        return True
    except (psutil.NoSuchProcess, KeyError, ValueError):
        return False


def status_after(error: BaseException) -> str:
    """The MLflow status of a run ended by ``error``: KILLED for Ctrl-C or a signal."""
    return "KILLED" if isinstance(error, KeyboardInterrupt | SystemExit) else "FAILED"


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
            # Artifacts beside the SQLite store, under mlruns/ (docs/operations.md, "MLflow").
            db_path = Path(uri.removeprefix("sqlite:///")).resolve()
            artifact_location = (db_path.parent / "artifacts").as_uri()
        return str(self.client.create_experiment(name, artifact_location=artifact_location))

    def start_parent(self, name: str, params: Mapping[str, str], description: str) -> str:
        tags = {
            **environment_tags(),
            **_owner_tags(),
            "mlflow.note.content": description,
            "kind": "benchmark",
        }
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.parent_id = run.info.run_id
        self.log_params(self.parent_id, params)
        return self.parent_id

    def start_level(self, run_name: str, level: str, params: Mapping[str, str]) -> str:
        tags = {**environment_tags(), **_owner_tags(), "level": level, "kind": "level"}
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

    def log_datasets(self, run_id: str, cfg: ExperimentConfig) -> None:
        """The run's training and test data as MLflow dataset inputs (``log_inputs``):
        the name, a digest of the data (``fl.tasks.data_digest``), where it was
        read — the files' directory, or the task's reference — and how many
        samples the run takes."""
        from mlflow.entities import Dataset, DatasetInput, InputTag  # only for this

        try:
            digest = data_digest(cfg.learning_task)
            root = cfg.task or str(resolve_data_root(cfg.dataset, cfg.data_dir))
        except (FedsimError, OSError):  # data this process cannot read: the run says so elsewhere
            return
        inputs = []
        for context, samples in (("training", cfg.train_samples), ("evaluation", cfg.test_samples)):
            profile = {"split": "train" if context == "training" else "test",
                       "samples": "all" if samples is None else samples}  # fmt: skip
            dataset = Dataset(
                name=f"{cfg.data_key}-{profile['split']}", digest=digest[:16], source_type="local",
                source=json.dumps({"uri": root}), profile=json.dumps(profile),
            )  # fmt: skip
            inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
        self.client.log_inputs(run_id, datasets=inputs)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        """``text`` as the artifact ``name`` of the run."""
        self.client.log_text(run_id, text, name)

    def log_json(self, run_id: str, data: object, name: str) -> None:
        """``data`` as the JSON artifact ``name`` of the run."""
        self.client.log_dict(run_id, data, name)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def close_abandoned_runs(self) -> list[str]:
        """Mark KILLED the runs left RUNNING by a fedsim process of this host that is gone.

        Returns their ids. Runs of other hosts, and of processes still running
        (another `fedsim run` at the same time), are left alone.
        """
        experiments = self.client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
        host = socket.gethostname().replace("'", "")
        runs = self.client.search_runs(
            [experiment.experiment_id for experiment in experiments],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{_HOST_TAG}` = '{host}'",
            max_results=10_000,
        )
        closed = []
        for run in runs:
            if not _owner_alive(run.data.tags):
                self.set_tags(run.info.run_id, {"fedsim.ended": "its process was gone"})
                self.finish(run.info.run_id, status="KILLED")
                closed.append(run.info.run_id)
        return closed
