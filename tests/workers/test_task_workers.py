"""Worker processes load the run's task themselves, and one whose task differs from
the coordinator's — other code, other data — is refused before round 1, in one line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fl.errors import ConfigError
from fl.partition import Partitioning
from fl.task_fingerprint import task_fingerprint
from fl.tasks import load_task
from workers.launcher import LocalWorkerPool, WorkerSpec

pytestmark = pytest.mark.e2e  # starts worker processes

TASK = textwrap.dedent("""
    from pathlib import Path

    import torch
    from torch import nn

    from fl.tasks import Task

    def data(split):
        rows = (Path(__file__).parent / f"{split}.csv").read_text().split()
        values = torch.tensor([[float(v) for v in row.split(",")] for row in rows])
        return values[:, :2].contiguous(), values[:, 2].to(torch.int64)

    task = Task(model=lambda: nn.Linear(2, 2), data=data)
""")


def _project(folder: Path) -> str:
    folder.mkdir()
    (folder / "task.py").write_text(TASK)
    for split, count in (("train", 12), ("test", 4)):
        rows = [f"{i},{i % 3},{i % 2}" for i in range(count)]
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return f"{folder / 'task.py'}:task"


def _pool(reference: str, fingerprint: str) -> LocalWorkerPool:
    partitioning = Partitioning(reference, "iid", 2, 0, None)
    spec = WorkerSpec(
        partitioning=partitioning, data_dir=None, threads=1, task=reference, fingerprint=fingerprint
    )
    return LocalWorkerPool(spec, request_timeout=60)


def test_workers_with_the_coordinators_task_start(tmp_path: Path) -> None:
    reference = _project(tmp_path / "project")
    with _pool(reference, task_fingerprint(load_task(reference))) as pool:
        assert pool.fleet is not None
        pongs = [worker.ping() for worker in pool.fleet.clients]
    assert [p.data.split(" ")[0] for p in pongs] == [reference, reference]
    assert {p.task for p in pongs} == {task_fingerprint(load_task(reference))}


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        (lambda folder: (folder / "task.py").write_text(TASK + "# edited\n"), "other code"),
        (lambda folder: (folder / "train.csv").write_text("0,0,0\n1,1,1\n2,0,1\n"), "other data"),
    ],
)
def test_a_worker_whose_task_differs_is_refused_naming_the_difference(
    tmp_path: Path, change: object, difference: str
) -> None:
    reference = _project(tmp_path / "project")
    ours = task_fingerprint(load_task(reference))  # the coordinator's, before the change
    change(tmp_path / "project")  # type: ignore[operator]  # what the workers then load
    pool = _pool(reference, ours)
    with pytest.raises(ConfigError, match=f"worker 'worker-0' runs task .* with {difference}"):
        pool.start()
    pool.stop()
    assert all(process.popen.poll() is not None for process in pool.processes)


def test_a_worker_without_data_starts_without_the_dataset(tmp_path: Path) -> None:
    """A worker serving no partition (an MPC party) holds no task data, so it neither
    needs the dataset on disk nor answers a fingerprint."""
    import json
    import os
    import select
    import subprocess
    import sys

    env = {**os.environ, "FEDSIM_OFFLINE": "1", "FEDSIM_CACHE": str(tmp_path)}
    env.pop("FEDSIM_DATA", None)
    command = [sys.executable, "-m", "fedsim", "worker", "serve", "--id", "w0"]
    proc = subprocess.Popen(
        [*command, "--dataset", "mnist"],  # no MNIST on this machine
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 120)
        assert readable, "no ready line within 120 s"
        line = proc.stdout.readline()
        assert json.loads(line)["event"] == "ready", line + (
            proc.stderr.read() if proc.stderr else ""
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
