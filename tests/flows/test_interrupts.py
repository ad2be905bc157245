"""Interrupted runs: Ctrl-C in a terminal, a second Ctrl-C, and kill -9.

Each run is a real ``fedsim run`` in its own session, with its own MLflow
store, Prefect home and temporary folder, so that what it leaves behind can
be counted. A terminal's Ctrl-C goes to every process of the foreground
group, which ``os.killpg`` reproduces.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.flows.scenarios import launched_workers, started_by

pytestmark = pytest.mark.e2e  # whole `fedsim run` processes, interrupted

LEVEL4 = ["--levels", "4", "--model", "mlp", "--workers", "2", "--rounds", "200"]
LEVEL4 += ["--train-samples", "2000", "--test-samples", "200", "--experiment", "interrupts"]


def _left_in_tmp(tmp_path: Path) -> list[Path]:
    """What the runs left in their $TMPDIR. Not counted: torch's compile-cache folder,
    which torch.optim makes on import of torch._dynamo and keeps by design."""
    return [p for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("torchinductor_")]


def _environment(tmp_path: Path) -> dict[str, str]:
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "FEDSIM_REPORTS_DIR": str(tmp_path / "reports"),
        "TMPDIR": str(scratch),
    }


def _start_level4(tmp_path: Path) -> subprocess.Popen[str]:
    """A level-4 run, returned once both workers are up and a round has run."""
    run = subprocess.Popen(
        [sys.executable, "-m", "fedsim", "run", *LEVEL4],
        env=_environment(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job
    )
    deadline = time.monotonic() + 300
    while len(launched_workers(run.pid)) < 2 and time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()[1]
        time.sleep(0.2)
    assert len(launched_workers(run.pid)) == 2
    time.sleep(3)  # into the rounds
    return run


def _statuses(tmp_path: Path) -> dict[str, str]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("interrupts")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    return {run.info.run_id: run.info.status for run in runs}


def _wait_gone(pids: list[int]) -> list[int]:
    """The processes of ``pids`` still alive after a bounded wait."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_ctrl_c_in_a_terminal_stops_the_run_with_one_line(tmp_path: Path) -> None:
    # Prepare
    run = _start_level4(tmp_path)
    children = started_by(run.pid)
    assert len(children) == 3  # two workers and Prefect's temporary API server

    # Execute: Ctrl-C to the whole process group.
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=120)

    # Assert: one line, every run KILLED, nothing left running or on disk.
    assert run.returncode == 130, stderr
    assert stderr.strip() == "fedsim: interrupted", stderr
    statuses = _statuses(tmp_path)
    assert len(statuses) == 2 and set(statuses.values()) == {"KILLED"}, statuses
    assert _wait_gone(children) == []
    assert _left_in_tmp(tmp_path) == []


def test_a_second_ctrl_c_exits_at_once() -> None:
    # Prepare: fedsim's interrupt handling, with a clean-up that would take a minute.
    script = (
        "import sys, time\n"
        "from fedsim.cli import exit_on_second_interrupt\n"
        "exit_on_second_interrupt()\n"
        "try:\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('cleaning up', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(1)  # the handler is installed before the sleep begins
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "cleaning up\n"

    # Execute
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)

    # Assert: it did not sit out the clean-up.
    assert proc.returncode == 130
    assert "interrupted again" in stderr
    assert time.monotonic() - start < 30


def test_kill_9_leaves_nothing_and_the_next_run_closes_its_runs(tmp_path: Path) -> None:
    # Prepare
    run = _start_level4(tmp_path)
    children = started_by(run.pid)
    assert len(children) == 3

    # Execute: kill -9 of the coordinator alone, then the next run.
    run.kill()
    run.communicate(timeout=60)
    left = _wait_gone(children)
    abandoned = _statuses(tmp_path)
    baseline = ["--levels", "baseline", "--rounds", "1", "--model", "mlp", "--experiment"]
    baseline += ["interrupts", "--train-samples", "200", "--test-samples", "100"]
    nxt = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", *baseline],
        env=_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )

    # Assert: no worker, server or secret outlived the coordinator; its runs
    # stayed RUNNING until the next run, which marked them KILLED and said so.
    assert left == []
    assert _left_in_tmp(tmp_path) == []
    assert set(abandoned.values()) == {"RUNNING"} and len(abandoned) == 2
    assert nxt.returncode == 0, nxt.stderr
    assert "marked 2 MLflow run(s) KILLED" in nxt.stdout + nxt.stderr
    after = _statuses(tmp_path)
    assert {after[run_id] for run_id in abandoned} == {"KILLED"}
