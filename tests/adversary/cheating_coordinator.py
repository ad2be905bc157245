"""A coordinator that cheats: it drives the workers' party steps itself, with whatever
arguments serve it, and keeps every reply.

The clients are honest workers that hold data of their own (as `fedsim worker
serve` and level 3 do) and train sealed, exactly as a round does; the
attacker also learns, for scoring only, what each client's trained state
really is (the same training unsealed, which is deterministic) — the truth
the attack is measured against.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fl.models import build_model, get_state
from fl.training import TrainConfig
from mpc.flatten import flatten_update, float_keys
from mpc.ring import FixedPointEncoder
from mpc.sharing import reconstruct
from workers.base import Worker
from workers.core import TRAIN_X_ID, TRAIN_Y_ID, WorkerCore
from workers.virtual import VirtualWorker

MODEL = "mlp"
CONFIG = TrainConfig(epochs=1, batch_size=8, lr=0.05)


def data_holders(
    count: int, *, samples: int = 16, min_cohort: int = 3, peer_secret: bytes | None = None
) -> list[VirtualWorker]:
    """``count`` workers, each with private data of its own and the floor `fedsim worker
    serve` has by default (and the federation's ``peer_secret``, if given)."""
    generator = torch.Generator().manual_seed(1)
    workers = []
    for index in range(count):
        core = WorkerCore(
            f"c{index}",
            objects={
                TRAIN_X_ID: torch.rand(samples + index, 1, 28, 28, generator=generator),
                TRAIN_Y_ID: torch.randint(0, 10, (samples + index,), generator=generator),
            },
            private=frozenset({TRAIN_X_ID, TRAIN_Y_ID}),
            min_cohort=min_cohort,
            peer_secret=peer_secret,
        )
        workers.append(VirtualWorker(core.worker_id, core=core))
    return workers


@dataclass(frozen=True)
class Trained:
    """A client's sealed trained state on its worker, and (for scoring) what it holds."""

    worker: Worker
    state_id: str
    samples: int
    truth: dict[str, torch.Tensor]


def train_round(
    workers: Sequence[Worker], configs: Sequence[TrainConfig] | None = None
) -> tuple[dict[str, torch.Tensor], list[Trained]]:
    """A round of training, each client sealed: honest, or with ``configs`` of the
    attacker's choosing per client."""
    global_state = get_state(build_model(MODEL, seed=0))
    trained = []
    for index, worker in enumerate(workers):
        config = CONFIG if configs is None else configs[index]
        fetched = worker.fit(MODEL, worker.send(global_state), config, seed=index)
        pointer, reply = worker.train(
            MODEL, worker.send(global_state), config, seed=index, sealed=True
        )
        trained.append(Trained(worker, pointer.id, reply.num_samples, dict(fetched.state)))
    return global_state, trained


def flat(state: dict[str, torch.Tensor], template: dict[str, torch.Tensor]) -> torch.Tensor:
    """The floating tensors of ``state`` as one float64 vector (the weight left off)."""
    return flatten_update(state, 1, float_keys(template))[:-1]


def open_sum(
    clients: Sequence[Trained],
    committee: Sequence[Worker],
    template: dict[str, torch.Tensor],
    *,
    weights: Sequence[int] | None = None,
    weightings: Sequence[str] | None = None,
    min_cohort: int = 2,
) -> torch.Tensor:
    """Run plain secure aggregation by hand and return the opened Σ weight·w ++ [Σ weight].

    ``weights`` are what the attacker asks each client to contribute with
    (sent the way older workers read it), ``weightings`` the rule it names to
    each; ``min_cohort`` is the smallest cohort it claims to the members.
    """
    session = f"attack-{secrets.token_hex(4)}"
    everyone = {w.id: w for w in [*(c.worker for c in clients), *committee]}
    public = {i: w.party_op("keygen", session=session)["public_key"] for i, w in everyone.items()}
    length = len(flat(template, template)) + 1
    encoder = FixedPointEncoder()
    sealed = []
    for position, client in enumerate(clients):
        weight = client.samples if weights is None else weights[position]
        reply = client.worker.party_op(
            "secagg.share",
            session=session,
            state_id=client.state_id,
            weight=weight,
            weighting="samples" if weightings is None else weightings[position],
            keys=float_keys(template),
            clients=len(clients),
            committee=[m.id for m in committee],
            public_keys=[public[m.id] for m in committee],
            lead=position % len(committee),
            fractional_bits=encoder.fractional_bits,
        )
        sealed.append(reply["ciphertexts"])
    sums = []
    for index, member in enumerate(committee):
        for client, ciphertexts in zip(clients, sealed, strict=True):
            member.party_op(
                "secagg.accept",
                session=session,
                sender=client.worker.id,
                sender_public_key=public[client.worker.id],
                ciphertext=ciphertexts[index],
                length=length,
            )
        reply = member.party_op(
            "secagg.reveal",
            session=session,
            contributors=[c.worker.id for c in clients],
            min_cohort=min_cohort,
        )
        sums.append(reply["sum_share"])
    return encoder.decode(reconstruct(sums))
