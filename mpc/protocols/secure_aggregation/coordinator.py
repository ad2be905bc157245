"""Secure aggregation: the coordinator learns the weighted sum of client updates, nothing else.

Protocol (roles: ``clients`` hold trained states; ``committee`` is k workers,
usually drawn from the clients), over Z/2^64 with f fractional bits:

1. ``keys``   — every client and member makes a session X25519 key pair and
   publishes the public key (``mpc.channel``);
2. ``share``  — client c encodes v_c = n_c·w_c ++ [n_c] and splits it into k
   additive shares, one sealed for each member (k − 1 of them as PRG seeds);
3. ``relay``  — the coordinator forwards each sealed share to its member, who
   opens it and adds it to its running sum s_j = Σ_c v_c,j;
4. ``open``   — each member returns s_j; the coordinator computes
   Σ_j s_j = Σ_c v_c and divides by the total weight Σ_c n_c.

What each party sees: the coordinator, sealed ciphertexts and k sums that are
uniformly random subject to adding up to the total; a member, for each client
either a seed of a stream or the client's vector minus k − 1 streams it does
not know — uniformly random either way. An individual update is revealed only
if all k members pool their shares.

The workers defend themselves against a coordinator that deviates
(``workers.contributions``, ``mpc.protocols.secure_aggregation.steps``; the attacks are in
``tests/adversary``): a trained state is sealed (never sent back or trained
from) and consumed by the one session that shares it; its weight is the
worker's own; every share carries the weighting rule and a digest of what the
client trained from, which members check are the same for all; a member
counts each client once, reveals only a sum over exactly the contributors
named and at least the minimum cohort (its own floor included), and accepts
nothing after revealing; and a run that fails after the opening is never
repeated (``ProtocolAborted``). Not defended: a coordinator that substitutes
session keys when the workers share no peer secret (``mpc.channel``); a
coordinator that makes k − 1 of a cohort's clients its own (Sybil workers it
runs); and a member that alters its share — the plain protocol only notices
when the total weight comes out wrong; ``--mac`` (``mpc.protocols.secure_aggregation_mac``)
detects it.

A member that drops out after the shares went out loses this session's sum
(k-of-k sharing); a surviving member abandons the session and releases the
clients' states (``mpc.protocols.release``), and the caller runs the protocol again
over the survivors (``releases``).

Precision and range: each client's encoding rounds to 2^−(f+1), so the average
is within n·2^−(f+1)/Σn_c of plain FedAvg (≈ 8·10⁻⁶ at f = 16) — far inside
the 10⁻⁴ the tests require; decoding to float64 keeps that while the sum is
below 2^53·2^−f (≈ 1.4·10¹¹). Each client's weighted values must stay below
2^62/(n·2^f) so that the sum of n cannot wrap around Z/2^64; a client refuses
to share beyond that, and the coordinator checks the opened total weight
against the sample counts it knows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from mpc.errors import MPCError
from mpc.flatten import float_keys, unflatten_average, vector_length
from mpc.protocols.base import Protocol, ProtocolRun, Step
from mpc.protocols.release import Release, abandon_session, release_args
from mpc.protocols.secure_aggregation import steps as party
from mpc.protocols.sessions import exchange_keys
from mpc.ring import FixedPointEncoder
from mpc.sharing import reconstruct
from workers.base import Worker
from workers.pointer import Pointer

__all__ = [
    "SECURE_AGGREGATION",
    "SecureAggregate",
    "SecureInput",
    "check_cohort",
    "reveal_sum_shares",
    "secure_average",
]


@dataclass(frozen=True)
class SecureInput:
    """A client's contribution: the worker, its sealed trained state, the weight expected.

    ``weight`` is what the coordinator expects the client to contribute with
    (its sample count from the training reply, or 1 for an unweighted rule):
    the worker uses its own, and the opened total weight is checked against
    the sum of these.
    """

    worker: Worker
    state: Pointer | str
    weight: int

    @property
    def state_id(self) -> str:
        """The id of the trained state on ``worker`` (checked to live there)."""
        return self.state if isinstance(self.state, str) else self.state.id_on(self.worker)


@dataclass(frozen=True)
class SecureAggregate:
    """The opened result: the weighted average state, the total weight, step seconds."""

    state: dict[str, torch.Tensor]
    total_weight: float
    seconds: dict[str, float]
    run: ProtocolRun


def check_cohort(clients: int, min_cohort: int) -> None:
    """One clear error, before any worker is asked, for a round too small to aggregate."""
    if min_cohort < 2:
        raise MPCError(
            f"the minimum cohort must be >= 2 (one client's sum is its update), got {min_cohort}"
        )
    if clients < min_cohort:
        raise MPCError(
            f"secure aggregation needs >= {min_cohort} clients (the minimum cohort), got {clients}"
        )


def _share(run: ProtocolRun) -> None:
    committee = run.workers("committee")
    inputs: dict[str, SecureInput] = run.state["inputs"]
    length = run.state["length"]

    def share(position: int) -> list[torch.Tensor]:
        client = run.workers("clients")[position]
        item = inputs[client.id]
        reply = client.party_op(
            party.SHARE,
            session=run.session,
            state_id=item.state_id,
            weighting=run.state["weighting"],
            keys=run.state["keys"],
            clients=len(run.workers("clients")),
            committee=[m.id for m in committee],
            public_keys=[run.public_key(m) for m in committee],
            lead=position % len(committee),
            fractional_bits=run.state["encoder"].fractional_bits,
            **release_args(run, client),
        )
        run.state["shared"].add(client.id)
        if reply["length"] != length:
            raise MPCError(f"{client.id!r} shared {reply['length']} values, the model has {length}")
        ciphertexts = reply["ciphertexts"]
        assert isinstance(ciphertexts, list)
        return ciphertexts

    positions = list(range(len(run.workers("clients"))))
    run.state["sealed"] = run.each(positions, share)


def _relay(run: ProtocolRun) -> None:
    clients = run.workers("clients")
    sealed: list[list[torch.Tensor]] = run.state["sealed"]

    def deliver(index: int) -> None:
        member = run.workers("committee")[index]
        for client, ciphertexts in zip(clients, sealed, strict=True):
            member.party_op(
                party.ACCEPT,
                session=run.session,
                sender=client.id,
                sender_public_key=run.public_key(client),
                ciphertext=ciphertexts[index],
                length=run.state["length"],
            )

    run.each(list(range(len(run.workers("committee")))), deliver)
    del run.state["sealed"]  # the coordinator keeps no ciphertext past the relay


def reveal_sum_shares(run: ProtocolRun, step: str) -> list[torch.Tensor]:
    """Each member's share of the sum (party step ``step``), checked to count every client.

    Members reveal only a sum over exactly the clients named, at least
    ``run.state["min_cohort"]`` of them (and their own floor).
    """
    contributors = [client.id for client in run.workers("clients")]
    clients = len(contributors)

    def reveal(member: Worker) -> torch.Tensor:
        reply = member.party_op(
            step,
            session=run.session,
            contributors=contributors,
            min_cohort=run.state["min_cohort"],
        )
        if reply["count"] != clients:
            raise MPCError(f"{member.id!r} summed {reply['count']} inputs, expected {clients}")
        share = reply["sum_share"]
        if not isinstance(share, torch.Tensor) or share.dtype != torch.int64:
            raise MPCError(f"{member.id!r} returned no int64 share of the sum")
        return share

    return run.each(list(run.workers("committee")), reveal)


def _open(run: ProtocolRun) -> None:
    run.state["total"] = run.state["encoder"].decode(
        reconstruct(reveal_sum_shares(run, party.REVEAL))
    )


SECURE_AGGREGATION = Protocol(
    "secure-aggregation",
    roles=("clients", "committee"),
    steps=(
        Step("keys", "clients", exchange_keys),
        Step("share", "clients", _share),
        Step("relay", "committee", _relay),
        Step("open", "committee", _open, opens=True),
    ),
    abandon=abandon_session,
)


def secure_average(
    inputs: Sequence[SecureInput],
    committee: Sequence[Worker],
    template: Mapping[str, torch.Tensor],
    *,
    encoder: FixedPointEncoder | None = None,
    parallel: bool = False,
    weighting: str = "samples",
    min_cohort: int = 2,
    releases: dict[str, Release] | None = None,
) -> SecureAggregate:
    """Σ_c n_c·w_c / Σ_c n_c over the clients' states, opening only the sum.

    ``template`` (the global state) gives the key order, shapes and dtypes;
    ``weighting`` is "samples" (n_c: each worker's own sample count) or
    "uniform" (n_c = 1); members refuse to open a sum of fewer than
    ``min_cohort`` clients. ``releases`` (by client id) carries over from a
    run that was abandoned before its opening: it is read for the clients'
    releases and, if this run is abandoned too, updated with new ones.
    """
    if len(committee) < 2:
        raise MPCError(
            f"secure aggregation needs a committee of >= 2 workers, got {len(committee)}"
        )
    check_cohort(len(inputs), min_cohort)
    run = SECURE_AGGREGATION.bind(
        {"clients": [item.worker for item in inputs], "committee": list(committee)},
        parallel=parallel,
    )
    run.state.update(
        inputs={item.worker.id: item for item in inputs},
        length=vector_length(template),
        keys=float_keys(template),
        encoder=encoder or FixedPointEncoder(),
        weighting=weighting,
        min_cohort=min_cohort,
        releases=releases if releases is not None else {},
        shared=set(),
    )
    run.run()
    expected = float(sum(item.weight for item in inputs))
    state, weight = unflatten_average(run.state.pop("total"), template, expected)
    return SecureAggregate(state, weight, dict(run.seconds), run)
