"""``fedsim serve`` against a real Prefect server on a free loopback port.

One server per module (``prefect server start``, ~10 s to healthy, its own
PREFECT_HOME and SQLite database), stopped afterwards with everything it
started. The serving processes run in their own process groups, so the flow-run
subprocesses a runner starts are killed with them even when a test fails.

Measured on 2 cores: the whole module 80-110 s; 45-60 s of it is
``test_per_minute_schedule_fires``, which waits for the next minute boundary
(bounded by SCHEDULE_BOUND seconds from starting the serving process).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from mlflow.tracking import MlflowClient

from fedsim.cli import main
from flows.config import PROFILES, ExperimentConfig
from flows.deployment import full_name
from tests.ports import free_port

pytestmark = pytest.mark.e2e  # Prefect servers, deployments and workers

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
FEDSIM = str(Path(sys.executable).with_name("fedsim"))
SCHEDULE_BOUND = 150.0  # seconds from serving to a finished per-minute run

# A manual run's parameters: two levels so parent and child runs can be checked.
SMALL = ExperimentConfig(
    levels="baseline,2",
    model="mlp",
    workers=2,
    rounds=1,
    batch_size=32,
    lr=0.05,
    train_samples=400,
    test_samples=200,
    experiment="serve-test",
).to_dict()
# The per-minute deployment's own parameters: as small as a benchmark gets.
TINY = {**SMALL, "levels": "baseline", "workers": 1, "train_samples": 200, "test_samples": 100}
TINY["experiment"] = "every-minute"


def _wait_for(check: Callable[[], T | None], timeout: float, what: str, proc: Any = None) -> T:
    """Poll ``check`` until it returns a value; fail (with the process log) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited {proc.returncode}\n{_log_tail(proc)}")
        value = check()
        if value is not None:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout:.0f} s\n{_log_tail(proc)}")


def _log_tail(proc: Any) -> str:
    log = getattr(proc, "log_path", None)
    return log.read_text(errors="replace")[-3000:] if log and log.exists() else ""


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    proc.log_path = log  # type: ignore[attr-defined]
    return proc


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, grace: float = 20.0) -> int:
    """Ask ``proc`` to stop with ``sig``, then kill its whole process group."""
    if proc.poll() is None:
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):  # leftover flow-run subprocesses
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(10)


def _healthy(url: str) -> bool | None:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200 or None
    except httpx.HTTPError:
        return None


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``prefect server start`` on a free loopback port; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    proc = _start([*cmd, "--port", str(port), "--no-ui"], env, home / "server.log")
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_for(lambda: _healthy(url), 90, "prefect server health", proc)
        yield url
    finally:
        _stop(proc, signal.SIGTERM)


@pytest.fixture
def prefect_api(prefect_server: str) -> Iterator[str]:
    """This process's Prefect client pointed at the module's server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server


def _serving_env(api_url: str, home: Path, mlflow_uri: str) -> dict[str, str]:
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home / "prefect-client"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # default 10 s: pick due runs up sooner
        "MLFLOW_TRACKING_URI": mlflow_uri,
    }


def _deployment(name: str) -> Any:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(full_name(name))
        except ObjectNotFound:
            return None


def _runs(deployment_id: Any) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        flt = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        return list(client.read_flow_runs(deployment_filter=flt))


def _mlflow_runs(uri: str, experiment: str) -> dict[str, Any]:
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} in {uri}"
    return {run.info.run_name: run for run in client.search_runs([found.experiment_id])}


@pytest.mark.parametrize("api_url", [None, "closed-port"])
def test_serve_without_a_server_is_one_line(api_url: str | None, tmp_path: Path) -> None:
    # Prepare: no PREFECT_API_URL at all, or one where nothing listens.
    env = {**os.environ, "PREFECT_HOME": str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url = f"http://127.0.0.1:{free_port()}/api"

    # Execute
    proc = subprocess.run([FEDSIM, "serve"], env=env, capture_output=True, text=True, timeout=60)

    # Assert
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    where = api_url or "(PREFECT_API_URL is not set)"
    assert lines[0].startswith(f"fedsim: error: no Prefect server {'at ' * bool(api_url)}{where}")
    assert "prefect server start" in lines[0]
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api" in lines[0]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--cron", "0 2 * *"], "invalid --cron '0 2 * *'"),
        (["--cron", "61 * * * *"], "invalid --cron '61 * * * *'"),
        (["--name", "a/b"], "invalid --name 'a/b'"),
        (["--levels", "9"], "unknown level '9'"),
        (["--config", "/nonexistent/experiment.toml"], "no such file"),
        (["--config", str(Path(__file__).parent / "serve_bad_levels.toml")], "unknown level '9'"),
    ],
)
def test_bad_serve_options_are_one_line(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: options are checked before the server is looked for.
    code = main(["serve", *argv])

    # Assert
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("fedsim: error: ") and fragment in err


def test_fedsim_serve_registers_the_cron_deployment_and_runs_it(
    prefect_api: str, tmp_path: Path
) -> None:
    # Prepare: `fedsim serve` as a user starts it, with its own MLflow store.
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = "nightly-test"
    argv = [FEDSIM, "serve", "--cron", "0 2 * * *", "--name", name, "--levels", "baseline"]
    proc = _start(
        [*argv, "--experiment", "serve-test"],
        _serving_env(prefect_api, tmp_path, mlflow_uri),
        tmp_path / "serve.log",
    )
    try:
        deployment = _wait_for(lambda: _deployment(name), 60, "deployment registered", proc)

        # Assert: the cron schedule, the profile's parameters, a module entrypoint.
        [schedule] = deployment.schedules
        assert schedule.schedule.cron == "0 2 * * *" and schedule.active
        expected = ExperimentConfig(
            **{**PROFILES["quick"], "levels": "baseline", "experiment": "serve-test"}
        )
        assert deployment.parameters == {"config": expected.to_dict()}
        form = deployment.parameter_openapi_schema["definitions"]["ExperimentParameters"]
        assert form["properties"]["workers"]["type"] == "integer"  # a typed form
        assert deployment.entrypoint == "flows.benchmark.benchmark_flow"
        assert "fedsim run --profile quick --levels baseline" in deployment.description

        # Execute: a manual run with small parameters, executed by the serving process.
        from prefect.deployments import run_deployment

        flow_run = run_deployment(
            full_name(name), parameters={"config": SMALL}, timeout=150, poll_interval=1
        )

        # Assert: completed, and logged to the serving process's MLflow store.
        assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
        runs = _mlflow_runs(mlflow_uri, "serve-test")
        children = {n: r for n, r in runs.items() if "mlflow.parentRunId" in r.data.tags}
        assert set(children) == {"L0 baseline", "L2 federated"}
        [parent] = [r for n, r in runs.items() if n not in children]
        for child in children.values():
            assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert 0 <= child.data.metrics["final_accuracy"] <= 1

        # Execute: Ctrl-C.
        code = _stop(proc, signal.SIGINT)

        # Assert: exit 130, and the runner paused the schedule on its way out.
        assert code == 130, _log_tail(proc)
        assert _deployment(name).paused
    finally:
        _stop(proc, signal.SIGKILL, grace=0)


def test_per_minute_schedule_fires(prefect_api: str, tmp_path: Path) -> None:
    """Bounded by SCHEDULE_BOUND: registration + next minute boundary + a tiny run."""
    # Prepare: the same deployment function `fedsim serve` uses, with tiny parameters.
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = "every-minute"
    script = (
        "import json, sys\n"
        "from flows.config import ExperimentConfig\n"
        "from flows.deployment import serve_benchmark\n"
        "serve_benchmark(ExperimentConfig(**json.loads(sys.argv[1])), name=sys.argv[2],"
        " cron='* * * * *')\n"
    )
    start = time.monotonic()
    proc = _start(
        [sys.executable, "-c", script, json.dumps(TINY), name],
        _serving_env(prefect_api, tmp_path, mlflow_uri),
        tmp_path / "serve.log",
    )
    try:
        deployment = _wait_for(lambda: _deployment(name), 60, "deployment registered", proc)
        assert deployment.schedules[0].schedule.cron == "* * * * *"

        # Execute: wait for the scheduler to create a run and the runner to finish it.
        def finished() -> Any:
            done = [r for r in _runs(deployment.id) if r.auto_scheduled and r.state.is_final()]
            return done[0] if done else None

        remaining = SCHEDULE_BOUND - (time.monotonic() - start)
        flow_run = _wait_for(finished, remaining, "a scheduled run to finish", proc)

        # Assert
        assert flow_run.state.is_completed(), flow_run.state
        runs = _mlflow_runs(mlflow_uri, "every-minute")
        assert "L0 baseline" in runs
    finally:
        _stop(proc, signal.SIGINT)


def _prefect_yaml() -> dict[str, Any]:
    import yaml

    [deployment] = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    return dict(deployment)


def test_prefect_yaml_matches_the_served_deployment() -> None:
    # Execute
    spec = _prefect_yaml()

    # Assert: the quick profile, the default cron, the flow `fedsim serve` serves.
    quick = ExperimentConfig(**PROFILES["quick"], profile="quick")
    assert spec["parameters"] == {"config": quick.to_dict()}
    assert spec["schedules"] == [{"cron": "0 2 * * *", "active": True}]
    assert spec["entrypoint"] == "flows/benchmark.py:benchmark_flow"
    assert spec["work_pool"]["name"] == "fedsim-process"


def test_prefect_yaml_deploys_to_a_process_pool_and_a_worker_runs_it(
    prefect_api: str, tmp_path: Path
) -> None:
    # Prepare: the pool, then `prefect deploy` from the repository root.
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = _serving_env(prefect_api, tmp_path, mlflow_uri)
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    for argv in (
        ["work-pool", "create", "fedsim-process", "--type", "process"],
        ["deploy", "--all"],
    ):
        done = subprocess.run(
            [*prefect, *argv], env=env, cwd=REPO, capture_output=True, text=True, timeout=90
        )
        assert done.returncode == 0, done.stdout + done.stderr
    deployment = _deployment("fedsim-nightly")
    assert deployment.work_pool_name == "fedsim-process"
    assert deployment.schedules[0].schedule.cron == "0 2 * * *"

    # Execute: a run with small parameters, picked up by one process worker.
    from prefect.deployments import run_deployment

    flow_run = run_deployment(full_name("fedsim-nightly"), parameters={"config": SMALL}, timeout=0)
    worker = [*prefect, "worker", "start", "--pool", "fedsim-process", "--run-once"]
    done = subprocess.run(worker, env=env, cwd=tmp_path, capture_output=True, timeout=150)

    # Assert
    from prefect import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert done.returncode == 0 and state is not None and state.is_completed(), done.stdout[-3000:]
    assert "L2 federated" in _mlflow_runs(mlflow_uri, "serve-test")


def test_serve_pins_a_relative_mlflow_store_to_an_absolute_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the default store, relative to where `fedsim serve` starts.
    from fedsim.serve_cli import pin_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

    # Execute
    uri = pin_tracking_uri()

    # Assert: flow-run subprocesses inherit the absolute store.
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlruns' / 'mlflow.db'}"
    assert os.environ["MLFLOW_TRACKING_URI"] == uri


def test_fedsim_run_links_its_flow_run_and_logs_each_round_to_the_server(
    prefect_api: str, tmp_path: Path
) -> None:
    """With a Prefect server configured, `fedsim run` prints its flow run's page and
    the server gets one log line per round (the terminal stays quiet)."""
    from prefect.client.orchestration import get_client

    ui = prefect_api.removesuffix("/api")
    env = _serving_env(prefect_api, tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    env |= {"PREFECT_UI_URL": ui, "FEDSIM_REPORTS_DIR": str(tmp_path / "reports")}
    args = ["--levels", "2", "--model", "mlp", "--workers", "2", "--rounds", "2"]
    args += ["--train-samples", "400", "--test-samples", "200", "--experiment", "linked"]
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", *args],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    links = [line for line in proc.stdout.splitlines() if line.startswith("Prefect flow run: ")]
    assert len(links) == 1 and links[0].startswith(f"Prefect flow run: {ui}/flow-runs/flow-run/")
    flow_run_id = links[0].rsplit("/", 1)[1]
    assert "round 1/2" not in proc.stdout + proc.stderr
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        (benchmark,) = [r for r in runs if str(r.id) == flow_run_id]
        assert benchmark.name == "linked · levels federated"  # the keys MLflow uses
        messages = [entry.message for entry in client.read_logs()]
    assert sum(m.startswith("round 2/2: test accuracy") for m in messages) >= 1
