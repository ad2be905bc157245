"""The sans-I/O worker core, driven with messages and raw bytes (no transport)."""

from __future__ import annotations

import pickle
import random
import struct

import pytest
import torch

from tests.workers.conftest import assert_same_value
from workers import messages as m
from workers.codec import MAGIC, Ref, encode_frame
from workers.core import ERROR_CODES, WorkerCore
from workers.errors import WorkerError


def _core() -> WorkerCore:
    return WorkerCore(
        "w0",
        objects={"x": torch.arange(6.0).reshape(2, 3), "w": torch.ones(3, 2), "n": 4},
    )


def _snapshot(core: WorkerCore) -> dict[str, object]:
    return {obj_id: core.handle(m.GetObject(obj_id, False)).value for obj_id in core.object_ids()}  # type: ignore[attr-defined]


def _reply(core: WorkerCore, data: bytes) -> m.Message:
    return m.decode_message(core.handle_bytes(data))


def test_put_get_delete_cycle() -> None:
    # Prepare
    core = WorkerCore("w0")
    value = {"a": torch.randn(3), "b": [1, "x"]}

    # Execute
    put = _reply(core, m.PutObject("o:1", value).encode())
    kept = _reply(core, m.GetObject("o:1", False).encode())
    taken = _reply(core, m.GetObject("o:1", True).encode())
    after = core.object_ids()

    # Assert
    assert put == m.Ack(("o:1",))
    assert isinstance(kept, m.ObjectReply) and isinstance(taken, m.ObjectReply)
    assert_same_value(kept.value, value)
    assert_same_value(taken.value, value)
    assert after == []


def test_ping_reports_identity_and_object_count() -> None:
    assert _reply(_core(), m.Ping().encode()) == m.Pong("w0", m.PROTOCOL_VERSION, 3)


def test_run_op_keeps_result_remote_and_reports_its_metadata() -> None:
    # Prepare
    core = _core()

    # Execute
    reply = core.handle(m.RunOp("matmul", (Ref("x"), Ref("w")), {}, "r"))
    stored = core.handle(m.GetObject("r", True))

    # Assert
    assert reply == m.OpReply("r", (2, 2), "float32")
    assert isinstance(stored, m.ObjectReply)
    assert torch.equal(stored.value, torch.arange(6.0).reshape(2, 3) @ torch.ones(3, 2))


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (m.GetObject("missing", True), "not_found"),
        (m.PutObject("x", 1), "exists"),
        (m.PutObject("", 1), "bad_request"),
        (m.PutObject("i" * 257, 1), "bad_request"),
        (m.RunOp("system", (Ref("x"),), {}, "r"), "bad_request"),
        (m.RunOp("__import__", ("os",), {}, "r"), "bad_request"),
        (m.RunOp("add", (Ref("x"), Ref("missing")), {}, "r"), "not_found"),
        (m.RunOp("matmul", (Ref("x"), Ref("x")), {}, "r"), "op_failed"),  # shape mismatch
        (m.RunOp("relu", (Ref("x"),), {"inplace": True}, "r"), "op_failed"),
        (m.RunOp("where", (Ref("x"),), {}, "r"), "op_failed"),  # a tuple, not a tensor
        (m.RunOp("add", (Ref("x"), 1), {}, "x"), "exists"),
        (m.RunPlan("nope", (), ("r",)), "not_found"),
        (m.SendPlan("p", {"version": 99}), "bad_request"),
        (m.Train("mlp", "x", "x", "w", {}, 0, "r"), "bad_request"),
        (m.Evaluate("mlp", "missing", "x", "w", 10), "not_found"),
        (m.Ack(("x",)), "bad_request"),  # a reply is not a request
    ],
)
def test_failures_become_error_replies_and_leave_the_store_intact(
    request_: m.Message, code: str
) -> None:
    # Prepare
    core = _core()
    before = _snapshot(core)

    # Execute
    reply = _reply(core, request_.encode())

    # Assert
    assert isinstance(reply, m.ErrorReply)
    assert reply.code == code
    assert code in ERROR_CODES
    assert_same_value(_snapshot(core), before)


def test_pickle_fed_to_the_core_gets_a_protocol_error() -> None:
    # Prepare
    core = _core()

    # Execute
    reply = _reply(core, pickle.dumps({"obj_id": "x"}))

    # Assert
    assert isinstance(reply, m.ErrorReply)
    assert reply.code == "protocol"
    assert "pickle" in reply.message


def test_garbage_never_raises_and_the_core_keeps_serving() -> None:
    # Prepare
    core = _core()
    before = _snapshot(core)
    rng = random.Random(7)
    valid = m.PutObject("new", torch.ones(4)).encode()
    inputs = [
        b"",
        MAGIC + struct.pack("<I", 0xFFFFFFFF),
        encode_frame("put", {"obj_id": "z"}),
        encode_frame("put", {"obj_id": "z", "value": 1, "admin": True}),
    ]
    inputs += [valid[: rng.randrange(len(valid))] for _ in range(200)]
    inputs += [rng.randbytes(rng.randrange(1, 100)) for _ in range(200)]

    # Execute
    replies = [_reply(core, data) for data in inputs]
    ping = core.handle(m.Ping())

    # Assert
    assert all(isinstance(r, m.ErrorReply) and r.code == "protocol" for r in replies)
    assert_same_value(_snapshot(core), before)
    assert ping == m.Pong("w0", m.PROTOCOL_VERSION, 3)


def test_delete_is_batched_and_idempotent() -> None:
    # Prepare
    core = _core()

    # Execute
    first = core.handle(m.DeleteObjects(("x", "n", "unknown")))
    again = core.handle(m.DeleteObjects(("x",)))

    # Assert
    assert first == m.Ack(("x", "n"))
    assert again == m.Ack(())
    assert core.object_ids() == ["w"]


def test_initial_objects_must_be_wire_values() -> None:
    with pytest.raises(WorkerError):
        WorkerCore("w0", objects={"bad": object()})
