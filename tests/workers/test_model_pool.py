"""ModelPool: modules lent per request, so workers do not each hold a model."""

from __future__ import annotations

import gc
import threading

import pytest
import torch
from torch import nn

from fl.errors import ConfigError, DataError
from fl.models import MLP2NN, build_model, get_state
from fl.training import TrainConfig
from workers.core import TRAIN_X_ID, TRAIN_Y_ID, WorkerCore
from workers.model_pool import ModelPool, trained_state
from workers.virtual import VirtualWorker


def live_modules(cls: type[nn.Module]) -> int:
    """Modules of exactly ``cls`` alive in this process (after a full collection)."""
    gc.collect()
    return sum(type(o) is cls for o in gc.get_objects())


MLP_STATE = get_state(build_model("mlp", seed=0))


def test_sequential_leases_reuse_one_module_and_drop_gradients() -> None:
    pool = ModelPool()
    with pool.lease("mlp", MLP_STATE) as first:
        first(torch.zeros(2, 1, 28, 28)).sum().backward()
        assert any(p.grad is not None for p in first.parameters())
    with pool.lease("mlp", MLP_STATE) as second:
        assert second is first
        assert all(p.grad is None for p in second.parameters())
    assert pool.built == 1 and pool.lent == 0 and pool.peak_lent == 1


def test_concurrent_leases_get_distinct_modules() -> None:
    pool = ModelPool()
    inside = threading.Barrier(3)
    seen: list[nn.Module] = []

    def borrow() -> None:
        with pool.lease("mlp", MLP_STATE) as module:
            seen.append(module)
            inside.wait(timeout=10)  # all three hold a module at once

    threads = [threading.Thread(target=borrow) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len({id(m) for m in seen}) == 3
    assert pool.built == 3 and pool.peak_lent == 3 and pool.lent == 0


def test_unknown_model_is_a_config_error_and_lends_nothing() -> None:
    pool = ModelPool()
    with pytest.raises(ConfigError, match="unknown model"), pool.lease("resnet", MLP_STATE):
        pass
    assert pool.built == 0 and pool.lent == 0


def test_a_lease_copies_the_state_unless_it_takes_it() -> None:
    pool = ModelPool()
    given = {k: t.clone() for k, t in MLP_STATE.items()}
    with pool.lease("mlp", given) as module:
        held = module.state_dict()
        assert all(torch.equal(held[k], given[k]) for k in given)
        assert all(held[k].data_ptr() != given[k].data_ptr() for k in given)
    with pool.lease("mlp", given, take=True) as module:
        held = module.state_dict()
        assert all(held[k].data_ptr() == given[k].data_ptr() for k in given)
        assert all(p.requires_grad for p in module.parameters())


def test_a_taken_state_of_another_dtype_is_converted_not_kept() -> None:
    pool = ModelPool()
    given = {k: t.double() for k, t in MLP_STATE.items()}
    with pool.lease("mlp", given, take=True) as module:
        held = module.state_dict()
        assert all(held[k].dtype == torch.float32 for k in given)
        assert all(torch.equal(held[k], MLP_STATE[k]) for k in given)


def test_a_trained_state_is_never_written_by_later_leases() -> None:
    # Prepare: train once and keep the module's own tensors, uncopied.
    pool = ModelPool()
    with pool.lease("mlp", MLP_STATE) as module:
        module(torch.ones(2, 1, 28, 28)).sum().backward()
        with torch.no_grad():
            for p in module.parameters():
                p.sub_(p.grad)
        kept = trained_state(module)
    snapshot = {k: t.clone() for k, t in kept.items()}

    # Execute: the same module is lent again, loaded and trained.
    with pool.lease("mlp", MLP_STATE) as again:
        assert again is module
        again(torch.ones(2, 1, 28, 28)).sum().backward()
        with torch.no_grad():
            for p in again.parameters():
                p.add_(1.0)

    # Assert
    assert all(torch.equal(kept[k], snapshot[k]) for k in kept)
    assert not torch.equal(kept["fc1.weight"], MLP_STATE["fc1.weight"])


def test_a_state_that_does_not_fit_is_refused_and_the_module_returned() -> None:
    pool = ModelPool()
    wrong_shape = {**MLP_STATE, "fc1.bias": torch.zeros(3)}
    missing = {k: t for k, t in MLP_STATE.items() if k != "fc1.bias"}
    for state in (wrong_shape, missing):
        with pytest.raises(DataError), pool.lease("mlp", state, take=True):
            pass
    assert pool.built == 1 and pool.lent == 0


def test_many_workers_sharing_a_pool_hold_one_model() -> None:
    # Prepare: 50 virtual workers with 4 samples each, one shared pool.
    pool = ModelPool()
    g = torch.Generator().manual_seed(0)
    workers = []
    for index in range(50):
        worker = VirtualWorker(f"w{index}", core=WorkerCore(f"w{index}", models=pool))
        worker.send(torch.randn(4, 1, 28, 28, generator=g), obj_id=TRAIN_X_ID)
        worker.send(torch.randint(0, 10, (4,), generator=g), obj_id=TRAIN_Y_ID)
        workers.append(worker)
    start = get_state(build_model("mlp", seed=0))
    before = live_modules(MLP2NN)

    # Execute: every worker trains once.
    for index, worker in enumerate(workers):
        state = worker.send(start)
        trained, _ = worker.train(
            "mlp", state, TrainConfig(epochs=1, batch_size=2, lr=0.1), seed=index
        )
        trained.get()

    # Assert: one module was built and lent in turn; no worker kept its own.
    after = live_modules(MLP2NN)
    assert pool.built == 1 and pool.peak_lent == 1
    assert after - before == 1


def test_copies_are_counted_by_model_key() -> None:
    """A process's pool outlives a run: the copies of one model are counted apart
    from the other models it built for other runs."""
    pool = ModelPool()
    for name in ("mlp", "mlp", "cnn"):
        with pool.lease(name, get_state(build_model(name, seed=0))):
            pass
    assert (pool.built, pool.built_of("mlp"), pool.built_of("cnn"), pool.built_of("x")) == (
        2, 1, 1, 0,
    )  # fmt: skip
