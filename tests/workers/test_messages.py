"""Typed protocol messages: every type round-trips; malformed messages are ProtocolErrors."""

from __future__ import annotations

import dataclasses
import math
import pickle

import pytest
import torch

from tests.workers.conftest import assert_same_value
from workers import messages as m
from workers.codec import Ref, encode_frame
from workers.errors import ProtocolError


def _examples(state: dict[str, torch.Tensor]) -> list[m.Message]:
    """At least one instance of every message type, with awkward values."""
    return [
        m.Ping(),
        m.PutObject("a:1", state),
        m.PutObject("a:2", [1, 2.5, None, "s", True, {"k": torch.ones(2, dtype=torch.int8)}]),
        m.GetObject("a:1", True),
        m.GetObject("a:1", False),
        m.DeleteObjects(("a:1", "a:2")),
        m.DeleteObjects(()),
        m.RunOp("matmul", (Ref("a:1"), Ref("a:2")), {}, "a:3"),
        m.RunOp("reshape", (Ref("x"), [2, -1]), {"dim": 1, "none": None}, "a:4"),
        m.SendPlan("p:1", {"version": 1, "num_inputs": 1, "steps": [], "outputs": [0]}),
        m.RunPlan("p:1", ("a:1",), ("a:5", "a:6")),
        m.Train("cnn", "s", "x", "y", {"epochs": 1, "batch_size": 32, "lr": 0.1}, 7, "r"),
        m.Fit("cnn", "s", "x", "y", {"epochs": 1, "batch_size": 32, "lr": 0.1}, 7),
        m.Evaluate("mlp", "s", "x", "y", 1000),
        m.Pong("w0", m.PROTOCOL_VERSION, 3),
        m.Pong("w1", m.PROTOCOL_VERSION, 2, "fashion-mnist iid 1/4 seed=0 limit=all"),
        m.Ack(("a:1",)),
        m.ObjectReply(state),
        m.ObjectReply(None),
        m.OpReply("a:3", (4, 2), "float32"),
        m.OpReply("a:7", (), "int64"),
        m.TrainReply("r", 300, 10, 0.75, 1.25),
        m.TrainReply("r", 300, 10, math.nan, 1.25),
        m.FitReply(state, 300, 10, 0.75, 1.25),
        m.EvalReply(0.5, 0.875, 1000),
        m.PartyOp(
            "secagg.share",
            {"session": "s", "weight": 3, "keys": [torch.zeros(32, dtype=torch.uint8)]},
        ),
        m.PartyReply({"sum_share": torch.arange(4), "count": 2}),
        m.ErrorReply("not_found", "no object 'x'"),
        m.AuthChallenge("w0", "ab" * 32, m.PROTOCOL_VERSION),
        m.AuthResponse("cd" * 32, "ef" * 32),
        m.AuthResult(True, "01" * 32, "", 2**28),
        m.AuthResult(False, "", "wrong secret", 0),
    ]


def _every_message_type() -> set[type[m.Message]]:
    return {
        cls
        for cls in vars(m).values()
        if isinstance(cls, type) and dataclasses.is_dataclass(cls) and issubclass(cls, m.Message)
    }


def test_examples_cover_every_message_type(cnn_state: dict[str, torch.Tensor]) -> None:
    # Execute
    covered = {type(msg) for msg in _examples(cnn_state)}

    # Assert
    assert covered == _every_message_type()
    assert len(covered) == 23


def test_every_message_round_trips(cnn_state: dict[str, torch.Tensor]) -> None:
    for msg in _examples(cnn_state):
        # Execute
        decoded = m.decode_message(m.encode_message(msg))

        # Assert
        assert type(decoded) is type(msg)
        for field in dataclasses.fields(msg):
            assert_same_value(getattr(decoded, field.name), getattr(msg, field.name))


def test_tags_are_stable() -> None:
    # The tags are the wire format: renaming a class must not change them.
    assert {cls.TAG for cls in _every_message_type()} == {
        "ping", "put", "get", "delete", "run_op", "send_plan", "run_plan", "train",
        "evaluate", "pong", "ack", "object", "op_reply", "train_reply", "eval_reply", "error",
        "auth_challenge", "auth_response", "auth_result", "party_op", "party_reply", "fit",
        "fit_reply",
    }  # fmt: skip


def test_construction_normalizes_sequences_and_numbers() -> None:
    # Execute
    msg = m.RunPlan("p", ["a", "b"], ["c"])  # type: ignore[arg-type]
    reply = m.EvalReply(1, 1, 10)

    # Assert
    assert msg.arg_ids == ("a", "b")
    assert msg.result_ids == ("c",)
    assert isinstance(reply.loss, float)


def test_unknown_tag_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="unknown message type"):
        m.decode_message(encode_frame("launch_missiles", {}))


@pytest.mark.parametrize(
    ("tag", "body", "match"),
    [
        ("get", {"obj_id": "a"}, "missing"),
        ("get", {"obj_id": "a", "delete": True, "extra": 1}, "unexpected"),
        ("get", {"obj_id": 3, "delete": True}, "obj_id"),
        ("get", {"obj_id": "a", "delete": 1}, "delete"),
        ("delete", {"obj_ids": "abc"}, "obj_ids"),
        ("delete", {"obj_ids": ["a", 2]}, "obj_ids"),
        ("run_op", {"op": "add", "args": [], "kwargs": [], "result_id": "r"}, "kwargs"),
        ("train", {"model": "m", "state_id": "s", "x_id": "x", "y_id": "y",
                   "config": {}, "seed": 1.5, "result_id": "r", "sealed": False}, "seed"),
        ("evaluate", {"model": "m", "state_id": "s", "x_id": "x", "y_id": "y",
                      "batch_size": True}, "batch_size"),
        ("op_reply", {"result_id": "r", "shape": [2, "3"], "dtype": "float32"}, "shape"),
        ("ping", [], "map of fields"),
    ],
)  # fmt: skip
def test_missing_extra_or_mistyped_fields_are_rejected(tag: str, body: object, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        m.decode_message(encode_frame(tag, body))


def test_pickled_message_is_rejected() -> None:
    # Prepare
    payload = pickle.dumps(m.Ping())

    # Execute / Assert
    with pytest.raises(ProtocolError, match="pickle"):
        m.decode_message(payload)


def test_messages_are_immutable() -> None:
    msg = m.Ack(("a",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.obj_ids = ("b",)  # type: ignore[misc]
