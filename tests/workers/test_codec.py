"""The wire codec: exact round trips, and rejection of everything that is not a valid frame."""

from __future__ import annotations

import gc
import json
import math
import pickle
import random
import struct

import numpy as np
import pytest
import torch

from tests.workers.conftest import assert_same_value
from workers.codec import (
    BODY_ALIGN,
    MAGIC,
    Ref,
    decode_frame,
    encode_frame,
    encode_frame_writable,
)
from workers.errors import ProtocolError


def _frame(header: object, body: bytes = b"") -> bytes:
    """A frame with a hand-written header, for crafting malicious input."""
    raw = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw + body


def test_plain_values_round_trip() -> None:
    # Prepare
    value = {
        "none": None,
        "bools": [True, False],
        "ints": [0, -1, 2**62, 10**30],
        "floats": [0.5, -0.0, math.inf, -math.inf, math.nan],
        "str": "ünïcode ✓",
        "nested": {"list": [[1, 2], {"deep": "x"}], "empty": {}, "ref": Ref("obj:1")},
        "map looking like a tag": {"tensor": 0},
    }

    # Execute
    tag, decoded = decode_frame(encode_frame("t", value))

    # Assert
    assert tag == "t"
    assert_same_value(decoded, value)


def test_every_dtype_round_trips_exactly(all_dtypes: dict[str, torch.Tensor]) -> None:
    # Execute
    _, decoded = decode_frame(encode_frame("t", all_dtypes))

    # Assert
    assert_same_value(decoded, all_dtypes)


def test_decoded_tensors_are_writable_and_do_not_alias_the_frame() -> None:
    # Prepare
    original = torch.arange(6, dtype=torch.float32)
    frame = bytearray(encode_frame("t", [original]))

    # Execute
    (decoded,) = decode_frame(frame)[1]
    decoded += 1  # would fail or warn on a read-only buffer
    frame[-4:] = b"\0\0\0\0"  # mutating the frame must not reach the tensor

    # Assert
    assert torch.equal(decoded, original + 1)


def test_large_state_dict_round_trips_in_order(cnn_state: dict[str, torch.Tensor]) -> None:
    # Prepare
    num_params = sum(t.numel() for t in cnn_state.values())

    # Execute
    frame = encode_frame("state", cnn_state)
    _, decoded = decode_frame(frame)

    # Assert
    assert num_params > 1_600_000
    assert len(frame) >= 4 * num_params
    assert_same_value(decoded, cnn_state)


def test_tensor_requiring_grad_is_sent_detached() -> None:
    # Prepare
    weight = torch.randn(2, 2, requires_grad=True)

    # Execute
    _, decoded = decode_frame(encode_frame("t", weight))

    # Assert
    assert not decoded.requires_grad
    assert torch.equal(decoded, weight.detach())


@pytest.mark.parametrize(
    "value",
    [object(), {1: "int key"}, torch.zeros(2, dtype=torch.complex64), b"bytes", {1, 2}],
    ids=["object", "int-key", "complex", "bytes", "set"],
)
def test_values_that_cannot_cross_the_wire_are_refused_on_encode(value: object) -> None:
    with pytest.raises(ProtocolError):
        encode_frame("t", value)


def test_pickled_payload_is_rejected_without_unpickling() -> None:
    # Prepare: a pickle that would run code if it were ever loaded
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    payload = pickle.dumps(Evil())

    # Execute / Assert
    with pytest.raises(ProtocolError, match="pickle"):
        decode_frame(payload)


@pytest.mark.parametrize("dtype", ["object", "complex64", "uint16", "", 7])
def test_dtypes_outside_the_allowlist_are_rejected(dtype: object) -> None:
    # Prepare
    header = {
        "tag": "t",
        "value": {"tensor": 0},
        "tensors": [{"dtype": dtype, "shape": [1], "offset": 0, "nbytes": 8}],
    }

    # Execute / Assert
    with pytest.raises(ProtocolError, match="dtype"):
        decode_frame(_frame(header, b"\0" * 8))


def _tensor_header(**desc: object) -> dict[str, object]:
    base: dict[str, object] = {"dtype": "float32", "shape": [2], "offset": 0, "nbytes": 8}
    base.update(desc)
    return {"tag": "t", "value": {"tensor": 0}, "tensors": [base]}


@pytest.mark.parametrize(
    ("header", "body"),
    [
        (_tensor_header(nbytes=12), b"\0" * 12),  # shape × itemsize != nbytes
        (_tensor_header(offset=4), b"\0" * 12),  # gap before the buffer
        (_tensor_header(), b"\0" * 4),  # buffer beyond the body
        (_tensor_header(), b"\0" * 9),  # trailing garbage
        (_tensor_header(shape=[-2]), b"\0" * 8),
        (_tensor_header(shape=[True, 2]), b"\0" * 8),
        (_tensor_header(shape=[2**40, 2**40], nbytes=4 * 2**80), b""),  # huge, no alloc
        (_tensor_header(shape=[1] * 17, nbytes=4), b"\0" * 4),
        ({"tag": "t", "value": {"tensor": 1}, "tensors": []}, b""),  # dangling index
        ({**_tensor_header(), "value": [{"tensor": 0}, {"tensor": 0}]}, b"\0" * 8),  # aliasing
        ({**_tensor_header(), "value": None}, b"\0" * 8),  # unreferenced tensor
        ({"tag": "t", "value": {"map": {}, "ref": "x"}, "tensors": []}, b""),
        ({"tag": "t", "value": {"code": "x"}, "tensors": []}, b""),
        ({"tag": "t", "value": {"ref": 3}, "tensors": []}, b""),
        ({"tag": "t", "value": None}, b""),  # missing key
        ({"tag": 1, "value": None, "tensors": []}, b""),
        ([1, 2, 3], b""),
    ],
)
def test_inconsistent_headers_are_rejected(header: object, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_frame(_frame(header, body))


def test_excessive_nesting_is_rejected_on_both_sides() -> None:
    # Prepare
    deep: list[object] = []
    for _ in range(100):
        deep = [deep]
    crafted = MAGIC + struct.pack("<I", 200_000) + b"[" * 100_000 + b"]" * 100_000

    # Execute / Assert
    with pytest.raises(ProtocolError, match="nested"):
        encode_frame("t", deep)
    with pytest.raises(ProtocolError):
        decode_frame(_frame({"tag": "t", "value": deep, "tensors": []}))
    with pytest.raises(ProtocolError):
        decode_frame(crafted)


def test_duplicate_json_keys_are_rejected() -> None:
    # Prepare
    raw = b'{"tag":"t","value":{"map":{"a":1,"a":2}},"tensors":[]}'

    # Execute / Assert
    with pytest.raises(ProtocolError, match="duplicate"):
        decode_frame(MAGIC + struct.pack("<I", len(raw)) + raw)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"FSM",
        b"XXXX\0\0\0\0",
        MAGIC + struct.pack("<I", 0xFFFFFFFF),  # huge declared header length
        MAGIC + struct.pack("<I", 100) + b"{}",  # header truncated
        MAGIC + struct.pack("<I", 2) + b"\xff\xfe",  # not UTF-8
        MAGIC + struct.pack("<I", 3) + b"{x}",  # not JSON
    ],
)
def test_malformed_prefixes_are_rejected(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_frame(data)


def test_every_truncation_of_a_frame_is_rejected(all_dtypes: dict[str, torch.Tensor]) -> None:
    # Prepare
    frame = encode_frame("t", {"x": all_dtypes["float32"], "y": [1, "two"]})

    # Execute / Assert
    for cut in range(len(frame)):
        with pytest.raises(ProtocolError):
            decode_frame(frame[:cut])


def test_random_corruption_raises_only_protocol_errors() -> None:
    # Prepare
    rng = random.Random(1234)
    frame = encode_frame("t", {"x": torch.arange(8.0), "meta": [1, 2.5, None, "s"]})
    outcomes = {"ok": 0, "rejected": 0}

    # Execute: flips anywhere, random junk; any other exception type fails the test
    for _ in range(2000):
        data = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = bytearray(rng.randbytes(rng.randint(0, 64)))
        try:
            decode_frame(bytes(data))
            outcomes["ok"] += 1
        except ProtocolError:
            outcomes["rejected"] += 1

    # Assert: most corruptions are caught (flips inside tensor bytes stay valid)
    assert outcomes["rejected"] > 1000


def test_every_frame_body_starts_aligned(cnn_state: dict[str, torch.Tensor]) -> None:
    for value in (cnn_state, {"x": torch.ones(3, dtype=torch.int8)}, [1, "two"], None):
        frame = encode_frame("t", value)
        (header_len,) = struct.unpack_from("<I", frame, 4)
        assert (8 + header_len) % BODY_ALIGN == 0
        assert_same_value(decode_frame(frame)[1], value)


def test_in_place_decoding_views_a_handed_over_bytearray(
    cnn_state: dict[str, torch.Tensor],
) -> None:
    # Prepare
    frame = encode_frame_writable("state", cnn_state)
    start = np.frombuffer(frame, dtype=np.uint8).ctypes.data
    end = start + len(frame)

    # Execute
    _, decoded = decode_frame(frame, in_place=True)
    _, copied = decode_frame(bytes(frame), in_place=True)  # bytes: never in place

    # Assert: views of the frame, which they pin (no resize) and keep alive.
    assert all(start <= t.data_ptr() < end for t in decoded.values())
    assert all(not start <= t.data_ptr() < end for t in copied.values())
    with pytest.raises(BufferError):
        frame.extend(b"x")
    del frame
    gc.collect()
    assert_same_value(decoded, cnn_state)
    assert_same_value(copied, cnn_state)
    decoded["fc1.weight"].add_(1.0)  # writable
    assert torch.equal(decoded["fc1.weight"], cnn_state["fc1.weight"] + 1.0)


def test_in_place_decoding_copies_a_misaligned_tensor() -> None:
    # Prepare: 3 int8 bytes put the float32 after them off its 4-byte alignment.
    value = {"a": torch.tensor([1, 2, 3], dtype=torch.int8), "b": torch.arange(5.0)}
    frame = encode_frame_writable("t", value)

    # Execute
    _, decoded = decode_frame(frame, in_place=True)

    # Assert
    assert_same_value(decoded, value)
    assert decoded["b"].data_ptr() % 4 == 0


def test_a_reply_is_written_over_the_frame_its_tensors_view(
    cnn_state: dict[str, torch.Tensor],
) -> None:
    # Prepare: a state decoded in place from a frame with room in its header,
    # then changed in place (as training changes it).
    frame = bytearray(encode_frame("put", {"id": "s", "state": cnn_state}, reserve=256))
    _, request = decode_frame(frame, in_place=True)
    trained = request["state"]
    for tensor in trained.values():
        tensor.mul_(0.5)
    addresses = [t.data_ptr() for t in trained.values()]
    reply = {"state": trained, "loss": 0.25, "steps": 2}

    # Execute
    answer = encode_frame_writable("fit_reply", reply, over=frame)

    # Assert: the same buffer, a new header; no tensor byte moved.
    assert answer is frame
    assert [t.data_ptr() for t in trained.values()] == addresses
    tag, decoded = decode_frame(bytes(answer))
    assert tag == "fit_reply"
    assert_same_value(decoded, reply)
    assert_same_value(decoded["state"], {k: t * 0.5 for k, t in cnn_state.items()})


def _reordered(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return dict(reversed(state.items()))


@pytest.mark.parametrize(
    ("reserve", "change"),
    [
        (256, lambda s: {**s, "fc2.bias": s["fc2.bias"].clone()}),  # one tensor elsewhere
        (256, _reordered),  # the same tensors in another order
        (256, lambda s: {k: t for k, t in s.items() if k != "fc2.bias"}),  # body not filled
        (0, lambda s: s),  # the reply's header does not fit before the body
    ],
    ids=["moved", "reordered", "partial", "no-room"],
)
def test_a_reply_that_is_not_the_frames_body_is_built_anew(
    cnn_state: dict[str, torch.Tensor], reserve: int, change: object
) -> None:
    # Prepare
    frame = bytearray(encode_frame("put", {"state": cnn_state}, reserve=reserve))
    _, request = decode_frame(frame, in_place=True)
    before = bytes(frame)
    reply = {"state": change(request["state"]), "a much longer header": "x" * 40}  # type: ignore[operator]

    # Execute
    answer = encode_frame_writable("fit_reply", reply, over=frame)

    # Assert: a new frame of the reply; the old one untouched.
    assert answer is not frame
    assert bytes(frame) == before
    assert_same_value(decode_frame(answer)[1], reply)
