"""Levels 4 and 5 end to end: real worker processes, real Prefect, real MLflow."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.benchmark import benchmark_flow
from flows.config import ExperimentConfig
from flows.progress import ProgressSink, use_sink
from tests.flows.scenarios import SMALL, launched_workers
from workers.errors import WorkerError

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_level4_matches_level3_and_leaves_no_process(
    mlflow_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    cfg = ExperimentConfig(**{**SMALL, "levels": "3,4"})

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedsim.launcher"):
        result = benchmark_flow(cfg.to_dict())

    # Assert: same data, seeds and sampling → the same model up to float rounding
    # (the worker processes use other thread counts than the coordinator).
    by_level = {s["level"]: s for s in result["levels"]}
    assert by_level["websocket-local"]["final_accuracy"] == pytest.approx(
        by_level["decentralized"]["final_accuracy"], abs=0.02
    )
    assert by_level["websocket-local"]["bytes_total"] > 2 * 2 * 2 * 4 * 199_210
    assert launched_workers(os.getpid()) == []
    assert "exited abnormally" not in caplog.text  # every worker stopped when asked


class _KillAfterFirstRound(ProgressSink):
    """Kills worker #1 once round 1 of level 4 is done."""

    def __init__(self) -> None:
        self.killed: list[int] = []
        self.warnings: list[str] = []

    def round_finished(self, level: str, round_index: int, metrics: Mapping[str, float]) -> None:
        if round_index == 1 and not self.killed:
            victim = sorted(launched_workers(os.getpid()))[1]
            os.kill(victim, signal.SIGKILL)
            self.killed.append(victim)

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def test_killed_worker_is_dropped_and_the_run_goes_on(mlflow_uri: str) -> None:
    # Prepare
    cfg = ExperimentConfig(**{**SMALL, "levels": "4", "workers": 3, "rounds": 3})
    sink = _KillAfterFirstRound()

    # Execute
    with use_sink(sink):
        result = benchmark_flow(cfg.to_dict())

    # Assert: rounds 2 and 3 FedAvg over the two survivors; the drop is logged.
    run_id = result["levels"][0]["run_id"]
    history = MlflowClient(mlflow_uri).get_metric_history(run_id, "dropped_workers")
    assert [(m.step, m.value) for m in history] == [(1, 0.0), (2, 1.0), (3, 1.0)]
    assert len(sink.warnings) == 2 and "1 of 3 workers dropped" in sink.warnings[0]
    assert result["levels"][0]["final_accuracy"] > 0.3
    assert launched_workers(os.getpid()) == []


def test_too_few_workers_fails_clearly_and_stops_every_process(mlflow_uri: str) -> None:
    # Prepare
    cfg = ExperimentConfig(**{**SMALL, "levels": "4", "workers": 2, "min_workers": 2})

    sink = _KillAfterFirstRound()

    # Execute
    with use_sink(sink), pytest.raises(WorkerError) as error:
        benchmark_flow(cfg.to_dict())

    # Assert: one error naming the worker lost, and no word of a FedAvg that never ran.
    assert "1 workers answered (#1 dropped), fewer than --min-workers 2" in str(error.value)
    assert not any("FedAvg over" in warning for warning in sink.warnings), sink.warnings
    assert launched_workers(os.getpid()) == []


@contextmanager
def _daemons(folder: Path) -> Iterator[Path]:
    """Two TLS worker daemons on 127.0.0.2 and 127.0.0.3, as `make run` starts them."""
    up = [sys.executable, "-m", "fedsim", "worker", "up", "--dir", str(folder)]
    up += ["--workers", "2", "--train-samples", "400"]
    subprocess.run(up, check=True, capture_output=True, timeout=300)
    try:
        yield folder / "workers.toml"
    finally:
        down = [sys.executable, "-m", "fedsim", "worker", "down", "--dir", str(folder)]
        subprocess.run(down, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def level5_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Daemons for the tests that leave them as they found them: started once."""
    with _daemons(tmp_path_factory.mktemp("level5")) as workers_file:
        yield workers_file


@pytest.fixture
def level5_daemons(tmp_path: Path) -> Iterator[Path]:
    """Daemons of one test's own, for the tests that kill one."""
    with _daemons(tmp_path) as workers_file:
        yield workers_file


def test_level5_trains_on_independent_tls_daemons(mlflow_uri: str, level5_shared: Path) -> None:
    # Prepare
    cfg = ExperimentConfig(**{**SMALL, "levels": "3,5", "workers_file": str(level5_shared)})

    # Execute
    result = benchmark_flow(cfg.to_dict())

    # Assert
    by_level = {s["level"]: s for s in result["levels"]}
    assert by_level["websocket-remote"]["final_accuracy"] == pytest.approx(
        by_level["decentralized"]["final_accuracy"], abs=0.02
    )


def test_level5_refuses_workers_holding_other_data(mlflow_uri: str, level5_shared: Path) -> None:
    # Prepare: the daemons hold partitions of the first 400 samples, the run wants 300.
    cfg = ExperimentConfig(
        **{**SMALL, "levels": "5", "train_samples": 300, "workers_file": str(level5_shared)}
    )

    # Execute / Assert
    with pytest.raises(Exception, match="this run needs"):
        benchmark_flow(cfg.to_dict())


class _RestartWorker(ProgressSink):
    """Kills daemon #1 after round 1 and brings it back (same address) after round 2."""

    def __init__(self, folder: Path) -> None:
        self.daemons = json.loads((folder / "pids.json").read_text())
        self.folder = folder
        self.restarted: subprocess.Popen[bytes] | None = None

    def round_finished(self, level: str, round_index: int, metrics: Mapping[str, float]) -> None:
        victim = self.daemons[1]
        if round_index == 1:
            os.kill(victim["pid"], signal.SIGKILL)
        if round_index == 2:
            ready = self.folder / "restarted.ready"
            with ready.open("wb") as out:
                self.restarted = subprocess.Popen(
                    victim["command"], stdout=out, stderr=subprocess.DEVNULL
                )
            deadline = time.monotonic() + 120
            while not ready.read_text().strip() and time.monotonic() < deadline:
                time.sleep(0.1)


def test_worker_that_comes_back_is_used_again(mlflow_uri: str, level5_daemons: Path) -> None:
    # Prepare
    cfg = ExperimentConfig(
        **{**SMALL, "levels": "5", "rounds": 4, "workers_file": str(level5_daemons)}
    )
    sink = _RestartWorker(level5_daemons.parent)

    # Execute
    try:
        with use_sink(sink):
            result = benchmark_flow(cfg.to_dict())
    finally:
        if sink.restarted is not None:
            sink.restarted.terminate()
            sink.restarted.wait(timeout=10)

    # Assert: dropped in round 2 only; rounds 3 and 4 use the worker again.
    history = MlflowClient(mlflow_uri).get_metric_history(
        result["levels"][0]["run_id"], "dropped_workers"
    )
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [0.0, 1.0, 0.0, 0.0]


def test_level5_starts_without_a_worker_that_is_down(mlflow_uri: str, level5_daemons: Path) -> None:
    # Prepare: worker #1 is down before the run starts; one worker suffices.
    daemons = json.loads((level5_daemons.parent / "pids.json").read_text())
    os.kill(daemons[1]["pid"], signal.SIGKILL)
    cfg = ExperimentConfig(
        **{**SMALL, "levels": "5", "min_workers": 1, "workers_file": str(level5_daemons)}
    )

    # Execute
    result = benchmark_flow(cfg.to_dict())

    # Assert: every round runs on the worker that is up and reports the other dropped.
    history = MlflowClient(mlflow_uri).get_metric_history(
        result["levels"][0]["run_id"], "dropped_workers"
    )
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [1.0, 1.0]
    assert result["levels"][0]["final_accuracy"] > 0.3
