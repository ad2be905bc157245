"""The examples in ``examples/`` run as written, as a user would run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_custom_strategy_example_runs_at_levels_3_and_4(tmp_path: Path) -> None:
    """The user's strategy by file path, through ``fedsim run --config`` at a virtual
    and a process level; levels 3 and 4 run the same rounds, so their accuracies
    agree; the run logs its whole config, which reads back as the same experiment."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1",
        "FEDSIM_REPORTS_DIR": str(tmp_path / "reports"),
        "COLUMNS": "120",
    }
    spec = "examples/custom_strategy.py:FedAvgM:beta=0.5"
    config = tmp_path / "experiment.toml"
    config.write_text(
        'levels = "3,4"\nmodel = "mlp"\nworkers = 2\nrounds = 5\n'
        f'train-samples = 400\ntest-samples = 200\nstrategy = "{spec}"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", "--config", str(config), "--rounds", "2"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in proc.stdout.splitlines()
        if "│" in line and "%" in line
    }
    assert set(rows) == {"L3 decentralized", "L4 websocket-local"}, proc.stdout
    assert rows["L3 decentralized"] == rows["L4 websocket-local"]
    import mlflow  # each level's run records the strategy it aggregated with

    from flows.config_file import read_config_file

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = {r.data.params.get("level"): r.data.params.get("strategy") for r in runs}
    assert logged.get("decentralized") == logged.get("websocket-local") == spec, logged
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    written = client.download_artifacts(parent.info.run_id, "experiment.toml", str(tmp_path))
    options = read_config_file(written)
    assert (options["rounds"], options["strategy"], options["levels"]) == (2, spec, "3,4")
