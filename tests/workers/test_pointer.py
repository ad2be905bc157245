"""Pointers on virtual workers: remote arithmetic, lifetimes, batched cleanup, moves."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

from tests.workers.conftest import assert_same_value
from workers.core import WorkerCore
from workers.errors import RemoteError, WorkerError
from workers.pointer import Pointer
from workers.virtual import VirtualWorker


@pytest.fixture()
def tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return {
        "x": torch.randn(5, 4, generator=gen),
        "w": torch.randn(4, 3, generator=gen),
        "b": torch.randn(3, generator=gen),
    }


def test_remote_arithmetic_equals_local_torch(tensors: dict[str, torch.Tensor]) -> None:
    # Prepare
    worker = VirtualWorker("alice")
    x, w, b = (worker.send(tensors[k]) for k in ("x", "w", "b"))
    tx, tw, tb = tensors["x"], tensors["w"], tensors["b"]

    # Execute
    results = {
        "affine_relu": ((x @ w + b).relu(), F.relu(tx @ tw + tb)),
        "scalars": ((2 - x) * 3 / 4 + 1, (2 - tx) * 3 / 4 + 1),
        "reflected_div_pow": (1 / (abs(x) + 1) ** 2, 1 / (abs(tx) + 1) ** 2),
        "neg_sum": ((-x).sum(), (-tx).sum()),
        "mean_dim": (x.mean(1), tx.mean(1)),
        "softmax": (x.log_softmax(dim=1), tx.log_softmax(dim=1)),
        "shape_ops": (x.t().reshape(2, 10).flatten(), tx.t().reshape(2, 10).flatten()),
        "argmax": (x.argmax(dim=1), tx.argmax(dim=1)),
        "compare": ((x > 0), tx > 0),
        "reflected_compare": ((0.5 >= x), 0.5 >= tx),  # noqa: SIM300 - tests reflection
        "linear_op": (worker.run_op("linear", x, w.t(), b), F.linear(tx, tw.t(), tb)),
        "cat_list": (worker.run_op("cat", [x, x], dim=0), torch.cat([tx, tx], dim=0)),
        "torch_fn": (F.linear(torch.relu(x), w.t(), b), F.linear(torch.relu(tx), tw.t(), tb)),
        "local_const": (torch.ones(3) + x @ w, torch.ones(3) + tx @ tw),
    }

    # Assert
    for name, (remote, local) in results.items():
        assert isinstance(remote, Pointer), name
        assert remote.shape == tuple(local.shape), name
        assert_same_value(remote.get(), local)


def test_get_frees_remotely_and_kills_the_pointer(tensors: dict[str, torch.Tensor]) -> None:
    # Prepare
    worker = VirtualWorker("alice")
    ptr = worker.send(tensors["x"])
    kept = worker.send(tensors["w"])

    # Execute
    value = ptr.get()
    peeked = kept.get(delete=False)

    # Assert
    assert torch.equal(value, tensors["x"])
    assert torch.equal(peeked, tensors["w"])
    assert worker.core.object_ids() == [kept.id]
    assert not ptr.alive
    with pytest.raises(WorkerError, match="dead"):
        ptr.get()
    with pytest.raises(WorkerError, match="dead"):
        _ = ptr + 1


def test_bad_op_name_is_refused_by_the_worker(tensors: dict[str, torch.Tensor]) -> None:
    # Prepare
    worker = VirtualWorker("alice")
    x = worker.send(tensors["x"])

    # Execute
    with pytest.raises(RemoteError) as info:
        worker.run_op("__getattribute__", x, "__class__")

    # Assert
    assert info.value.code == "bad_request"
    assert worker.core.object_ids() == [x.id]


def test_non_allowlisted_torch_function_is_refused_locally(
    tensors: dict[str, torch.Tensor],
) -> None:
    # Prepare
    worker = VirtualWorker("alice")
    x = worker.send(tensors["x"])
    sent_before = worker.messages_sent

    # Execute / Assert
    with pytest.raises(WorkerError, match="sin"):
        torch.sin(x)
    assert worker.messages_sent == sent_before


def test_remote_torch_error_is_a_remote_error(tensors: dict[str, torch.Tensor]) -> None:
    # Prepare
    worker = VirtualWorker("alice")
    x = worker.send(tensors["x"])

    # Execute
    with pytest.raises(RemoteError) as info:
        _ = x @ x  # (5, 4) @ (5, 4)

    # Assert
    assert info.value.code == "op_failed"
    assert worker.ping().num_objects == 1


def test_mixing_pointers_from_two_workers_is_refused(tensors: dict[str, torch.Tensor]) -> None:
    # Prepare
    alice, bob = VirtualWorker("alice"), VirtualWorker("bob")
    x = alice.send(tensors["x"])
    w = bob.send(tensors["w"])
    sent_before = alice.messages_sent

    # Execute / Assert
    with pytest.raises(WorkerError, match="bob"):
        _ = x @ w
    assert alice.messages_sent == sent_before  # refused before anything was sent


def test_dropped_pointers_are_freed_in_few_batched_messages(
    tensors: dict[str, torch.Tensor],
) -> None:
    # Prepare
    worker = VirtualWorker("alice")
    x = worker.send(tensors["x"])
    initial = worker.core.object_ids()

    # Execute: 200 remote results, dropped while more requests keep flowing
    ptrs = []
    for i in range(200):
        ptrs.append(x + i)
        if i % 50 == 49:
            del ptrs[:]
            gc.collect()
    del ptrs
    gc.collect()
    worker.flush()

    # Assert
    assert worker.core.object_ids() == initial
    assert 1 <= worker.message_counts["delete"] <= 200 // 64 + 1
    assert worker.message_counts["run_op"] == 200


def test_close_flushes_and_then_refuses_requests(tensors: dict[str, torch.Tensor]) -> None:
    # Prepare
    worker = VirtualWorker("alice")
    temp = worker.send(tensors["x"])
    del temp
    gc.collect()

    # Execute
    with worker:
        pass

    # Assert
    assert worker.core.object_ids() == []
    with pytest.raises(WorkerError, match="closed"):
        worker.ping()


def test_unowned_pointer_never_frees_its_object() -> None:
    # Prepare
    core = WorkerCore("alice", objects={"data/train/x": torch.ones(2)})
    worker = VirtualWorker("alice", core=core)

    # Execute
    ptr = Pointer(worker, "data/train/x", owned=False)
    doubled = (ptr * 2).get()
    del ptr
    gc.collect()
    worker.flush()

    # Assert
    assert torch.equal(doubled, torch.full((2,), 2.0))
    assert core.object_ids() == ["data/train/x"]


def test_named_objects_are_not_owned_unless_asked(tensors: dict[str, torch.Tensor]) -> None:
    # Prepare
    worker = VirtualWorker("alice")

    # Execute: pointers to named objects dropped at once, as a launcher does
    worker.send(tensors["x"], obj_id="data/train/x")
    worker.send(tensors["w"], obj_id="scratch", owned=True)
    gc.collect()
    worker.flush()

    # Assert
    assert worker.core.object_ids() == ["data/train/x"]


def test_pointer_delete_frees_now_with_pending_ids(tensors: dict[str, torch.Tensor]) -> None:
    # Prepare
    worker = VirtualWorker("alice")
    state, temp = worker.send(tensors["x"]), worker.send(tensors["w"])
    del temp
    gc.collect()

    # Execute
    state.delete()

    # Assert
    assert not state.alive
    assert worker.core.object_ids() == []
    assert worker.message_counts["delete"] == 1


def test_explicit_delete_kills_pointers(tensors: dict[str, torch.Tensor]) -> None:
    # Prepare
    worker = VirtualWorker("alice")
    a, b = worker.send(tensors["x"]), worker.send(tensors["w"])

    # Execute
    freed = worker.delete([a, b.id])

    # Assert
    assert freed == 2
    assert not a.alive
    assert worker.core.object_ids() == []


def test_move_between_virtual_workers(tensors: dict[str, torch.Tensor]) -> None:
    # Prepare
    alice, bob = VirtualWorker("alice"), VirtualWorker("bob")
    x = alice.send(tensors["x"])

    # Execute
    moved = x.move(bob)
    result = (moved * 2).get()

    # Assert
    assert moved.worker is bob
    assert not x.alive
    assert alice.core.object_ids() == []
    assert torch.equal(result, tensors["x"] * 2)


def test_failed_move_loses_nothing(tensors: dict[str, torch.Tensor]) -> None:
    # Prepare
    alice, bob = VirtualWorker("alice"), VirtualWorker("bob")
    x = alice.send(tensors["x"])
    bob.close()

    # Execute
    with pytest.raises(WorkerError, match="closed"):
        x.move(bob)

    # Assert
    assert x.alive
    assert torch.equal(x.get(), tensors["x"])


def test_byte_counters_count_encoded_frames(tensors: dict[str, torch.Tensor]) -> None:
    # Prepare
    worker = VirtualWorker("alice")
    big = torch.zeros(100_000)

    # Execute
    ptr = worker.send(big)
    sent_after_put = worker.bytes_sent
    received_before_get = worker.bytes_received
    ptr.get()

    # Assert
    assert sent_after_put >= big.numel() * 4
    assert worker.bytes_received - received_before_get >= big.numel() * 4
    assert worker.messages_sent == 2
