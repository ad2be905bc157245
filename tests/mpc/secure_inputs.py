"""Client states and their secure-aggregation inputs, shared by the aggregation tests."""

from __future__ import annotations

import secrets
from typing import Any

import torch

from fl.models import build_model, get_state
from fl.training import TrainConfig
from mpc.secure_aggregation import SecureInput

# What every test contribution vouches it was trained from: one round, one model.
TEST_DIGEST = bytes(32)


def model_states(count: int, model: str = "mlp") -> list[dict[str, torch.Tensor]]:
    """``count`` different states of ``model`` (seeds 0, 1, ...)."""
    return [get_state(build_model(model, seed=i)) for i in range(count)]


def sealed_input(worker: Any, state: dict[str, torch.Tensor], samples: int) -> SecureInput:
    """``state`` sealed on the (virtual) ``worker`` as its own training result of ``samples``."""
    obj_id = f"sealed/{secrets.token_hex(4)}"
    worker.core.seal_contribution(obj_id, state, samples, TEST_DIGEST)
    return SecureInput(worker, obj_id, samples)


def secure_inputs(
    workers: list[Any], states: list[dict[str, torch.Tensor]], weights: list[int]
) -> list[SecureInput]:
    """Each state sealed on its worker, as that client's input of that many samples."""
    return [sealed_input(w, s, n) for w, s, n in zip(workers, states, weights, strict=True)]


def trained_inputs(
    workers: list[Any], states: list[dict[str, torch.Tensor]], model: str = "mlp"
) -> tuple[list[SecureInput], list[dict[str, torch.Tensor]], list[int]]:
    """Each worker trains from its state on its own data twice with one seed: once to
    fetch the result (what the aggregate must equal), once sealed (its contribution).

    For workers in other processes, whose contributions only sealed training makes.
    """
    config = TrainConfig(epochs=1, batch_size=8, lr=0.05)
    inputs, trained, weights = [], [], []
    for index, (worker, state) in enumerate(zip(workers, states, strict=True)):
        fetched = worker.fit(model, worker.send(state), config, seed=index)
        pointer, reply = worker.train(model, worker.send(state), config, seed=index, sealed=True)
        inputs.append(SecureInput(worker, pointer, reply.num_samples))
        trained.append(dict(fetched.state))
        weights.append(reply.num_samples)
    return inputs, trained, weights
