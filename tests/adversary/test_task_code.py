"""A coordinator that names code: the model key of Train, Fit and Evaluate is looked
up among what the worker loaded from its own command line, never imported.

Flower ships a ClientApp's code to its nodes; fedsim does not ship code at all: a
worker runs the task it was started with (``fedsim worker serve --task``). The
attack: a coordinator names a module of its choosing (a file it planted, or
``os:system``) as the model, hoping the worker imports it. The control shows the
attack would work on a worker that resolved keys by importing them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import fl.tasks
import workers.model_pool
from fl.models import build_model, get_state
from fl.partition import Partitioning
from fl.training import TrainConfig
from workers import messages as m
from workers.core import TRAIN_X_ID, TRAIN_Y_ID, WorkerCore
from workers.virtual import VirtualWorker

PARTITIONING = Partitioning("fashion-mnist", "iid", 20, 0, 2000)
CONFIG = TrainConfig(epochs=1, batch_size=32, lr=0.1).to_dict()


def _planted(tmp_path: Path) -> tuple[str, Path]:
    """A task file whose import leaves a marker: the coordinator's payload."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "planted_task.py"
    path.write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from fl.tasks import Task\n"
        "from fl.models import MLP2NN\n"
        "task = Task(model=MLP2NN, data=lambda split: None)\n"
    )
    return f"{path}:task", marker


def _requests(key: str, state_id: str) -> list[m.Request]:
    return [
        m.Train(key, state_id, TRAIN_X_ID, TRAIN_Y_ID, CONFIG, 0, "r1"),
        m.Evaluate(key, state_id, TRAIN_X_ID, TRAIN_Y_ID, 100),
        m.Fit(key, state_id, TRAIN_X_ID, TRAIN_Y_ID, CONFIG, 0),
    ]


def test_a_model_key_naming_code_is_refused_and_never_imported(tmp_path: Path) -> None:
    reference, marker = _planted(tmp_path)
    core = WorkerCore.with_partition("w0", PARTITIONING, 0, data_dir=None)
    worker = VirtualWorker("w0", core=core)
    state = worker.send(get_state(build_model("mlp", seed=0)))
    before_objects, before_modules = core.object_ids(), set(sys.modules)

    replies = [
        core.handle(request)
        for key in (reference, "os:system", "subprocess:run", "fl.tasks:Task")
        for request in _requests(key, state.id)
    ]

    assert all(isinstance(r, m.ErrorReply) and r.code == "bad_request" for r in replies)
    assert all("unknown model" in r.message for r in replies)  # type: ignore[union-attr]
    assert not marker.exists()  # the planted module never ran
    assert set(sys.modules) == before_modules
    assert core.object_ids() == before_objects  # the store is as it was; the worker serves on
    assert worker.evaluate("mlp", state).num_samples == 100


def test_control_a_worker_that_imported_model_keys_would_run_the_payload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, marker = _planted(tmp_path)
    monkeypatch.setattr(
        workers.model_pool, "model_task", fl.tasks.load_task
    )  # the unguarded lookup
    core = WorkerCore.with_partition("w0", PARTITIONING, 0, data_dir=None)
    state = VirtualWorker("w0", core=core).send(get_state(build_model("mlp", seed=0)))

    core.handle(_requests(reference, state.id)[1])

    assert marker.exists()
