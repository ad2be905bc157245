"""The examples in ``examples/`` run as written, as a user would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.run_env import isolated_run_env

pytestmark = pytest.mark.e2e  # each example runs in a process of its own

ROOT = Path(__file__).resolve().parent.parent


def _run(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_remote_shares_example_opens_each_result_only_to_its_audience() -> None:
    out = _run("remote_shares.py")
    error = float(re.search(r"max error: (\S+)", out).group(1))  # type: ignore[union-attr]
    assert error < 1e-3
    assert "opened to dana as 'revealed/" in out
    assert "':coordinator' may not see" in out


def test_authenticated_shares_example_catches_the_cheating_party() -> None:
    out = _run("authenticated_shares.py")
    error = float(re.search(r"max error: (\S+)", out).group(1))  # type: ignore[union-attr]
    assert error < 1e-2  # inputs with 12 fractional bits, the rest exact
    assert "bob cheated: MAC check failed" in out


def _fedsim_run(tmp_path: Path, args: list[str], cwd: Path = ROOT) -> tuple[str, dict[str, str]]:
    """``fedsim run ARGS`` in a process of its own, with its own MLflow store and Prefect
    home; its stdout and each level's accuracy, by run name."""
    env = isolated_run_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", *args],
        cwd=cwd, capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in proc.stdout.splitlines()
        if "│" in line and "%" in line
    }
    return proc.stdout, rows


def _level_params(tmp_path: Path, name: str) -> dict[str, str | None]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {
        r.data.params["level"]: r.data.params.get(name) for r in runs if "level" in r.data.params
    }


def test_custom_strategy_example_runs_at_levels_3_and_4(tmp_path: Path) -> None:
    """The user's strategy by file path, through ``fedsim run --config`` at a virtual
    and a process level; levels 3 and 4 run the same rounds, so their accuracies
    agree; the run logs its whole config, which reads back as the same experiment."""
    spec = "examples/custom_strategy.py:FedAvgM:beta=0.5"
    config = tmp_path / "experiment.toml"
    config.write_text(
        'levels = "3,4"\nmodel = "mlp"\nworkers = 2\nrounds = 5\n'
        f'train-samples = 400\ntest-samples = 200\nstrategy = "{spec}"\n'
    )
    stdout, rows = _fedsim_run(tmp_path, ["--config", str(config), "--rounds", "2"])
    assert set(rows) == {"L3 decentralized", "L4 websocket-local"}, stdout
    assert rows["L3 decentralized"] == rows["L4 websocket-local"]
    logged = _level_params(tmp_path, "strategy")
    assert logged.get("decentralized") == logged.get("websocket-local") == spec, logged
    import mlflow

    from flows.config_file import read_config_file

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    written = client.download_artifacts(parent.info.run_id, "experiment.toml", str(tmp_path))
    options = read_config_file(written)
    assert (options["rounds"], options["strategy"], options["levels"]) == (2, spec, "3,4")


@pytest.mark.parametrize(
    ("task", "cwd", "options", "floor"),
    [
        # 10 digit classes: chance is 10%.
        ("examples/digits_task.py:task", ".", [], 0.25),
        # Benign or not, 63% benign in the test rows: a constant guess gets 63%.
        ("examples/tabular_logreg.py:task", ".", ["--lr", "0.05", "--batch-size", "16"], 0.9),
        # Written in a project of its own, imported from there as a module; 3 cultivars.
        ("wine_task:task", "examples/my_project", ["--workers", "3"], 0.8),
    ],
)
def test_task_examples_run_at_levels_3_and_4(
    tmp_path: Path, task: str, cwd: str, options: list[str], floor: float
) -> None:
    """Each example task trains at a virtual level and over worker processes that load
    it themselves (``fedsim worker serve --task``, the fingerprints compared first):
    the same rounds, so the same accuracy, and better than a guess."""
    stdout, rows = _fedsim_run(
        tmp_path, ["--task", task, "--levels", "3,4", "--rounds", "2", *options], ROOT / cwd
    )
    assert set(rows) == {"L3 decentralized", "L4 websocket-local"}, stdout
    assert rows["L3 decentralized"] == rows["L4 websocket-local"]
    assert float(rows["L3 decentralized"].rstrip("%")) / 100 > floor, rows
    assert _level_params(tmp_path, "task") == {"decentralized": task, "websocket-local": task}
    assert set(_level_params(tmp_path, "model").values()) == {None}  # the task replaces it
