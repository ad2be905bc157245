"""``fedsim new NAME`` writes a project that runs as written: its test passes and
``fedsim run --config experiment.toml`` trains its task at the file's levels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs fedsim and pytest in processes of their own

FEDSIM = [sys.executable, "-m", "fedsim"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(cwd / ".prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1",
        "COLUMNS": "120",
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own store, as a user gets it
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_a_new_project_runs_as_written(tmp_path: Path) -> None:
    made = _run([*FEDSIM, "new", "my-exp"], tmp_path)
    assert made.returncode == 0, made.stderr
    project = tmp_path / "my-exp"
    assert sorted(p.name for p in project.iterdir()) == [
        "README.md", "experiment.toml", "task.py", "test_task.py",
    ]  # fmt: skip
    assert 'experiment = "my-exp"' in (project / "experiment.toml").read_text()

    tested = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_task.py"], project
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr

    ran = _run([*FEDSIM, "run", "--config", "experiment.toml", "--rounds", "2"], project)
    assert ran.returncode == 0, ran.stderr
    rows = {
        line.split("│")[1].strip(): float(line.split("│")[2].strip().rstrip("%"))
        for line in ran.stdout.splitlines()
        if "│" in line and "%" in line
    }
    assert set(rows) == {"L0 baseline", "L2 federated", "L3 decentralized", "L4 websocket-local"}
    assert rows["L2 federated"] == rows["L3 decentralized"] == rows["L4 websocket-local"] > 30
    assert (project / "mlruns" / "mlflow.db").is_file()  # the project's own MLflow store


@pytest.mark.parametrize(
    ("name", "message"),
    [("1st", "a name starts with a letter"), ("a/b", "a name starts with a letter")],
)
def test_a_bad_name_or_an_existing_folder_is_one_line(
    tmp_path: Path, name: str, message: str
) -> None:
    bad = _run([*FEDSIM, "new", name], tmp_path)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and message in bad.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    again = _run([*FEDSIM, "new", "taken"], tmp_path)
    assert again.returncode == 1 and "exists" in again.stderr
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]  # nothing written
