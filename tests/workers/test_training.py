"""Remote training and evaluation on virtual workers, checked bitwise against local fl calls.

Uses the real Fashion-MNIST files (Debian's dataset-fashion-mnist); a small
``limit`` keeps the MLP runs well under a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fl.data import Split
from fl.models import build_model, get_state, set_state
from fl.partition import Partitioning
from fl.task_data import load_partition
from fl.training import TrainConfig, evaluate, train_local
from tests.workers.conftest import assert_same_value
from workers import messages as m
from workers.base import Broadcast
from workers.core import TRAIN_X_ID, TRAIN_Y_ID, WorkerCore
from workers.errors import RemoteError
from workers.virtual import VirtualWorker

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
PARTITIONING = Partitioning("fashion-mnist", "iid", 2, 0, 600)
CONFIG = TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.5)
SEED = 11

pytestmark = pytest.mark.skipif(
    not (DATA_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist",
)


def _train_locally(state: dict[str, torch.Tensor], data: Split) -> dict[str, torch.Tensor]:
    model = build_model("mlp")
    set_state(model, state)
    train_local(model, data, CONFIG, torch.Generator().manual_seed(SEED))
    return get_state(model)


def _partition_worker() -> tuple[WorkerCore, VirtualWorker, Split, dict[str, torch.Tensor]]:
    """A virtual worker holding partition 1, the same partition loaded here, and an
    initial MLP state."""
    core = WorkerCore.with_partition("w1", PARTITIONING, 1, data_dir=DATA_DIR)
    worker = VirtualWorker("w1", core=core)
    local_data = load_partition(PARTITIONING, 1, data_dir=DATA_DIR)
    return core, worker, local_data, get_state(build_model("mlp", seed=0))


def _encoded_size(value: object) -> int:
    return len(m.PutObject("probe", value).encode())


def test_worker_with_its_own_partition_trains_like_local_training() -> None:
    # Prepare
    core, worker, local_data, initial = _partition_worker()
    state_size = _encoded_size(initial)

    # Execute
    state_ptr = worker.send(initial)
    new_ptr, reply = worker.train("mlp", state_ptr, CONFIG, seed=SEED)
    sent_after_train = worker.bytes_sent
    remote_state = new_ptr.get()

    # Assert
    assert core.object_ids() == [TRAIN_X_ID, TRAIN_Y_ID, state_ptr.id]
    assert reply.num_samples == len(local_data) == 300
    assert reply.steps == 2 * 10  # ceil(300 / 32) per epoch
    assert not torch.equal(remote_state["fc1.weight"], initial["fc1.weight"])
    assert_same_value(remote_state, _train_locally(initial, local_data))
    assert sent_after_train >= state_size
    assert worker.bytes_received >= state_size


def test_training_on_sent_data_equals_local_training_and_evaluation() -> None:
    # Prepare: level 2 — the coordinator ships the shard
    data = load_partition(PARTITIONING, 0, data_dir=DATA_DIR)
    worker = VirtualWorker("w0")
    initial = get_state(build_model("mlp", seed=1))
    x, y = worker.send(data.x), worker.send(data.y)

    # Execute
    new_ptr, _ = worker.train("mlp", worker.send(initial), CONFIG, seed=SEED, x_id=x, y_id=y)
    remote_eval = worker.evaluate("mlp", new_ptr, x_id=x, y_id=y, batch_size=128)
    remote_state = new_ptr.get()

    # Assert
    local_state = _train_locally(initial, data)
    local_model = build_model("mlp")
    set_state(local_model, local_state)
    local_eval = evaluate(local_model, data, batch_size=128)
    assert_same_value(remote_state, local_state)
    assert remote_eval == m.EvalReply(local_eval.loss, local_eval.accuracy, local_eval.num_samples)
    assert worker.bytes_sent >= _encoded_size(data.x) + _encoded_size(initial)


def test_bad_training_requests_fail_cleanly_and_keep_the_store() -> None:
    # Prepare
    core = WorkerCore.with_partition("w0", PARTITIONING, 0, data_dir=DATA_DIR)
    worker = VirtualWorker("w0", core=core)
    state = worker.send(get_state(build_model("mlp", seed=0)))
    cnn_state = worker.send(get_state(build_model("cnn", seed=0)))
    before = core.object_ids()
    bad_config = {"epochs": 0, "batch_size": 32, "lr": 0.1}

    # Execute
    codes = []
    for request in (
        m.Train("mlp", state.id, TRAIN_X_ID, TRAIN_Y_ID, bad_config, 0, "r1"),
        m.Train("resnet", state.id, TRAIN_X_ID, TRAIN_Y_ID, CONFIG.to_dict(), 0, "r2"),
        m.Train("mlp", cnn_state.id, TRAIN_X_ID, TRAIN_Y_ID, CONFIG.to_dict(), 0, "r3"),
        m.Train("mlp", state.id, TRAIN_Y_ID, TRAIN_X_ID, CONFIG.to_dict(), 0, "r4"),
        m.Train("mlp", state.id, TRAIN_X_ID, TRAIN_Y_ID, CONFIG.to_dict(), -1, "r5"),
        m.Evaluate("mlp", state.id, TRAIN_X_ID, TRAIN_Y_ID, 0),
    ):
        reply = core.handle(request)
        assert isinstance(reply, m.ErrorReply)
        codes.append(reply.code)
    with pytest.raises(RemoteError):
        worker.evaluate("mlp", TRAIN_X_ID)

    # Assert
    assert codes == ["bad_request"] * 6
    assert core.object_ids() == before
    assert worker.evaluate("mlp", state).num_samples == 300


def test_fit_equals_local_training_and_consumes_its_state() -> None:
    # Prepare
    core, worker, local_data, initial = _partition_worker()
    state_ptr = worker.send(initial)

    # Execute
    reply = worker.fit("mlp", state_ptr, CONFIG, seed=SEED)
    first = {k: t.clone() for k, t in reply.state.items()}
    again = worker.fit("mlp", worker.send(initial), CONFIG, seed=SEED + 1)

    # Assert: one round trip trains as Train + GetObject would, and the worker
    # kept nothing — the state it was handed became the model it trained.
    assert_same_value(reply.state, _train_locally(initial, local_data))
    assert (reply.num_samples, reply.steps) == (300, 20)
    assert core.object_ids() == [TRAIN_X_ID, TRAIN_Y_ID]
    assert not state_ptr.alive
    assert_same_value(reply.state, first)  # the next Fit did not write into it
    assert not torch.equal(again.state["fc1.weight"], first["fc1.weight"])
    assert worker.message_counts["fit"] == 2 and worker.message_counts["get"] == 0


def test_fit_of_a_broadcast_state_answers_over_the_frame_it_trained() -> None:
    # Prepare: a Broadcast frame leaves room in its header for the reply.
    core, worker, local_data, initial = _partition_worker()
    broadcast = Broadcast.of(initial)
    bad_config = {"epochs": 0, "batch_size": 32, "lr": 0.1}

    # Execute: a refused Fit first (the state stays), then the Fit, then a Fit
    # of a state sent without room in its header.
    state_ptr = worker.send_broadcast(broadcast)
    refused = core.handle_bytes(
        m.Fit("mlp", state_ptr.id, TRAIN_X_ID, TRAIN_Y_ID, bad_config, 0).encode()
    )
    received = worker.bytes_received
    reply = worker.fit("mlp", state_ptr, CONFIG, seed=SEED)
    in_place = worker.bytes_received - received
    received = worker.bytes_received
    rebuilt = worker.fit("mlp", worker.send(initial), CONFIG, seed=SEED)

    # Assert: the answer is the request's frame, its header rewritten (same
    # length), carrying the trained state; without room, a new frame of equal
    # content.
    assert isinstance(m.decode_message(refused), m.ErrorReply)
    assert in_place == len(broadcast.frame)
    assert worker.bytes_received - received < len(broadcast.frame)
    assert_same_value(reply.state, _train_locally(initial, local_data))
    assert_same_value(rebuilt.state, reply.state)
    assert core.object_ids() == [TRAIN_X_ID, TRAIN_Y_ID]


def test_bad_fit_requests_fail_cleanly_and_keep_the_state() -> None:
    # Prepare
    core = WorkerCore.with_partition("w0", PARTITIONING, 0, data_dir=DATA_DIR)
    worker = VirtualWorker("w0", core=core)
    state = worker.send(get_state(build_model("mlp", seed=0)))
    cnn_state = worker.send(get_state(build_model("cnn", seed=0)))
    sealed = core.handle(
        m.Train("mlp", state.id, TRAIN_X_ID, TRAIN_Y_ID, CONFIG.to_dict(), 0, "s", True)
    )
    assert isinstance(sealed, m.TrainReply)
    before = core.object_ids()
    bad_config = {"epochs": 0, "batch_size": 32, "lr": 0.1}
    good = CONFIG.to_dict()

    # Execute
    replies = [
        core.handle(request)
        for request in (
            m.Fit("mlp", state.id, TRAIN_X_ID, TRAIN_Y_ID, bad_config, 0),
            m.Fit("resnet", state.id, TRAIN_X_ID, TRAIN_Y_ID, good, 0),
            m.Fit("mlp", cnn_state.id, TRAIN_X_ID, TRAIN_Y_ID, good, 0),
            m.Fit("mlp", state.id, TRAIN_Y_ID, TRAIN_X_ID, good, 0),
            m.Fit("mlp", state.id, TRAIN_X_ID, TRAIN_Y_ID, good, -1),
            m.Fit("mlp", TRAIN_X_ID, TRAIN_X_ID, TRAIN_Y_ID, good, 0),
            m.Fit("mlp", "s", TRAIN_X_ID, TRAIN_Y_ID, good, 0),
            m.Fit("mlp", "missing", TRAIN_X_ID, TRAIN_Y_ID, good, 0),
        )
    ]
    after_refusals = core.object_ids()
    with pytest.raises(RemoteError, match="does not fit"):
        worker.fit("mlp", cnn_state, CONFIG, seed=0)
    worker.flush()

    # Assert: every refusal left the store as it was; the client's refused Fit
    # killed its pointer and freed the state with the next batched delete.
    codes = [r.code if isinstance(r, m.ErrorReply) else type(r).__name__ for r in replies]
    assert codes == ["bad_request"] * 7 + ["not_found"]
    assert after_refusals == before
    assert not cnn_state.alive and cnn_state.id not in core.object_ids()
    assert worker.fit("mlp", state, CONFIG, seed=0).num_samples == 300
