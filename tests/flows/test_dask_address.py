"""An existing Dask cluster, by address: docs/scale.md's commands, equal results, clear refusals."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fl.errors import ConfigError
from flows.benchmark import benchmark_flow
from flows.config import ExperimentConfig
from flows.preflight import preflight
from flows.rounds import batch_tasks
from tests.dask_cluster import DaskCommands, dask_commands
from tests.flows.scenarios import THOUSAND, assert_same_level_3
from tests.ports import free_port

pytestmark = pytest.mark.usefixtures("prefect_harness")

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[2]
# 40 clients, 20 a round in 2 batches: small enough for a test, two workers busy.
BASE = {**THOUSAND, "levels": "3", "workers": 40, "fraction": 0.5, "batch_size": 8}
BASE |= {"train_samples": 800, "client_threads": 1}


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[DaskCommands]:
    with dask_commands(tmp_path) as cluster:
        yield cluster


def _prefect_env() -> dict[str, str]:
    """The test's Prefect server, for the workers to report their task runs to."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the prefect_harness fixture sets an API URL"
    return {"PREFECT_API_URL": url}


def test_existing_cluster_equals_in_process_run(
    mlflow_uri: str, tmp_path: Path, scheduler: DaskCommands
) -> None:
    # Prepare: `dask scheduler` and `dask worker --nworkers 2`, as docs/scale.md says.
    scheduler.add_workers(2, _prefect_env())
    on_cluster = ExperimentConfig(**BASE, task_runner="dask", dask_address=scheduler.address)
    preflight(on_cluster)

    # Execute
    local = benchmark_flow(ExperimentConfig(**BASE).to_dict())
    built_here = batch_tasks.PROCESS_MODELS.built
    remote = benchmark_flow(on_cluster.to_dict())

    # Assert: the cluster's run is the in-process run; both of its workers
    # trained clients, and none trained here.
    assert_same_level_3(remote["parent_run_id"], local["parent_run_id"], tmp_path)
    assert batch_tasks.PROCESS_MODELS.built == built_here
    built = scheduler.models_built()
    assert len(built) == 2 and all(count >= 1 for count in built.values()), built


def test_unreachable_scheduler_is_one_line_at_once() -> None:
    # Prepare: a port nothing listens on.
    cfg = ExperimentConfig(
        **BASE, task_runner="dask", dask_address=f"tcp://127.0.0.1:{free_port()}"
    )

    # Execute / Assert: refused at once, not after Dask's 30 s of retries.
    with pytest.raises(ConfigError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1"):
        preflight(cfg)


def test_scheduler_without_workers_is_refused(scheduler: DaskCommands) -> None:
    cfg = ExperimentConfig(**BASE, task_runner="dask", dask_address=scheduler.address)

    with pytest.raises(ConfigError, match="has no workers: start `dask worker"):
        preflight(cfg)


def test_workers_that_would_differ_or_fail_are_refused(
    tmp_path: Path, scheduler: DaskCommands
) -> None:
    cfg = ExperimentConfig(**BASE, task_runner="dask", dask_address=scheduler.address)
    # Prepare: a worker importing a copy of fedsim with one line added, as a
    # machine that was not updated would.
    code = tmp_path / "other-code"
    for package in ("fedsim", "fl", "flows", "mpc", "workers"):
        shutil.copytree(
            REPO / package, code / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    with open(code / "fl" / "training.py", "a") as source:
        source.write("# edited on one machine only\n")
    scheduler.add_workers(1, {**_prefect_env(), "PYTHONPATH": str(code)})

    # Execute / Assert
    with pytest.raises(ConfigError, match="runs other fedsim code than this process"):
        preflight(cfg)

    # Prepare: a worker whose $FEDSIM_DATA copy of Fashion-MNIST has one test
    # label changed — another machine's copy, as far as fedsim can tell.
    other = tmp_path / "other-data"
    other.mkdir()
    for source_file in DEBIAN_FASHION.glob("*.gz"):
        (other / source_file.name).symlink_to(source_file)
    assert len(list(other.iterdir())) == 4, "Debian's dataset-fashion-mnist is installed"
    labels = other / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(labels.read_bytes()))
    labels.unlink()
    data[-1] = (data[-1] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(data)))
    scheduler.add_workers(1, {**_prefect_env(), "FEDSIM_DATA": str(other)})

    # Execute / Assert: other data is named before other code.
    with pytest.raises(ConfigError, match="sees other fashion-mnist data than this process"):
        preflight(cfg)

    # Prepare: a worker whose dataset location does not exist.
    scheduler.add_workers(1, {**_prefect_env(), "FEDSIM_DATA": str(tmp_path / "missing")})

    # Execute / Assert: the worker's own error, named, before any difference.
    with pytest.raises(
        ConfigError, match=r"cannot run fedsim's batches \(DataError: \$FEDSIM_DATA"
    ):
        preflight(cfg)
