"""Client states and their secure-aggregation inputs, shared by the aggregation tests."""

from __future__ import annotations

import secrets
from typing import Any

import torch

from fl.models import build_model, get_state
from fl.training import TrainConfig
from mpc.channel import SessionKey, open_sealed
from mpc.protocols.secure_aggregation.coordinator import SecureInput
from workers.contributions import Contribution, Contributions
from workers.party import Party, party_steps, tensor_from_bytes

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
    workers: list[Any], state: dict[str, torch.Tensor], model: str = "mlp"
) -> tuple[list[SecureInput], list[dict[str, torch.Tensor]], list[int]]:
    """Each worker trains from the global ``state`` on its own data twice with one seed:
    once to fetch the result (what the aggregate must equal), once sealed (its
    contribution; every client trains the same model the same way).

    For workers in other processes, whose contributions only sealed training makes.
    """
    config = TrainConfig(epochs=1, batch_size=8, lr=0.05)
    inputs, trained, weights = [], [], []
    for index, worker in enumerate(workers):
        fetched = worker.fit(model, worker.send(state), config, seed=index)
        pointer, reply = worker.train(model, worker.send(state), config, seed=index, sealed=True)
        inputs.append(SecureInput(worker, pointer, reply.num_samples))
        trained.append(dict(fetched.state))
        weights.append(reply.num_samples)
    return inputs, trained, weights


def member_views(update: torch.Tensor, lead: int) -> list[torch.Tensor]:
    """What each of 2 committee members decrypts from one client sharing ``update``
    (past the header and kind byte: a seed, or the lead's full share), as bytes."""
    steps = party_steps()
    contributions = Contributions()
    contributions.add("state", Contribution(1, TEST_DIGEST))
    client = Party("client", lambda _id: {"w": update}, contributions)
    members = [Party(f"m{i}", lambda _id: None) for i in range(2)]
    for party in (client, *members):
        steps["keygen"](party, {"session": "s"})
    keys: list[SessionKey] = [m.secret("s/key") for m in members]
    reply = steps["secagg.share"](
        client,
        {
            "session": "s",
            "state_id": "state",
            "weighting": "samples",
            "keys": ["w"],
            "clients": 2,
            "committee": ["m0", "m1"],
            "public_keys": [tensor_from_bytes(k.public_bytes) for k in keys],
            "lead": lead,
            "fractional_bits": 16,
        },
    )
    client_public = client.secret("s/key").public_bytes
    opened = []
    for member, key, sealed in zip(members, keys, reply["ciphertexts"], strict=True):
        payload = open_sealed(
            key,
            client_public,
            sealed.numpy().tobytes(),
            session="s",
            sender="client",
            recipient=member.worker_id,
            label="secagg/share",
        )
        # past the contribution header (weighting, digest) and the kind byte
        opened.append(torch.frombuffer(bytearray(payload[34:]), dtype=torch.uint8))
    return opened
