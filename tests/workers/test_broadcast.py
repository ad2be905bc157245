"""Broadcast: one encoding of a value, stored on many workers."""

from __future__ import annotations

import torch

from workers.base import REPLY_HEADER_RESERVE, Broadcast
from workers.core import WorkerCore
from workers.messages import PutObject, decode_message
from workers.virtual import VirtualWorker


def test_one_frame_reaches_every_worker_and_each_counts_its_bytes() -> None:
    # Prepare
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1.5])}
    workers = [VirtualWorker(f"w{i}", core=WorkerCore(f"w{i}")) for i in range(3)]

    # Execute
    broadcast = Broadcast.of(state)
    pointers = [w.send_broadcast(broadcast) for w in workers]

    # Assert: the frame is an ordinary PutObject (its header padded to leave room
    # for a reply); every worker holds an equal, separate copy, counts the frame
    # as sent, and frees it with the pointer.
    plain = PutObject(broadcast.obj_id, state).encode()
    reserved = PutObject(broadcast.obj_id, state).encode(reserve=REPLY_HEADER_RESERVE)
    assert broadcast.frame == reserved
    assert len(broadcast.frame) - len(plain) >= REPLY_HEADER_RESERVE
    decoded = decode_message(broadcast.frame)
    assert isinstance(decoded, PutObject) and decoded.obj_id == broadcast.obj_id
    assert all(torch.equal(decoded.value[k], state[k]) for k in state)
    values = [p.get(delete=False) for p in pointers]
    for worker, value in zip(workers, values, strict=True):
        assert all(torch.equal(value[k], state[k]) for k in state)
        assert worker.message_counts["put"] == 1
        assert worker.bytes_sent >= len(broadcast.frame)
    values[0]["w"].add_(1)
    assert torch.equal(pointers[1].get(delete=False)["w"], state["w"])
    for pointer in pointers:
        pointer.delete()
    assert all(broadcast.obj_id not in w.core.object_ids() for w in workers)
