"""Malicious-secure aggregation: secure aggregation whose opened sum carries SPDZ MACs.

Plain secure aggregation (``mpc.protocols.secure_aggregation``) trusts the committee to
return its shares faithfully: a member that adds δ to its share silently
shifts the global model by δ. Here every share is authenticated under a MAC
key α that no single worker knows (SPDZ; Damgård, Pastro, Smart, Zakarias,
CRYPTO 2012), over F_p with p = 2^61 − 1 (``mpc.field``; Z/2^64 admits
cheap forgeries, see ``mpc.mac``), and the opening is checked before the sum
is used. Roles: ``clients``, ``committee`` (k members) and a ``dealer`` (a
worker outside the committee, trusted like PySyft's crypto provider).

1. ``keys``    — every worker makes a session key pair (``mpc.channel``);
2. ``deal``    — the dealer draws α and seals α_j for member j, and a mask
   seed for each client c (its mask r_c is the seed's stream);
3. ``input``   — client c publishes ε_c = x_c − r_c to the committee: one box
   under a one-time key, the key sealed for each member;
4. ``relay``   — members open their key share, then each client's ε_c, and
   add up Σε;
5. ``mask``    — the dealer seals shares of R = Σ r_c and α·R over the
   clients every member added (one set per session, naming those clients),
   so member j holds [Σx]_j and [αΣx]_j = [αR]_j + α_j·Σε (MACs are linear);
6. ``open``    — members reveal their shares of Σx; the coordinator adds them;
7. ``check``   — the coordinator draws fresh coefficients ρ (after the
   opening), members return σ_j = Σ_k ρ_k(m_j,k − α_j·y_k), and Σσ_j must be 0.

A failed check raises :class:`~mpc.errors.MPCError` naming it; the caller
never sees the sum, and the run is not retried (its steps ``open`` and
``check`` are marked as opening). The coordinator is the verifier: it draws ρ
after the opening and collects every σ_j before any party sees another's, so
no member can adapt its σ to the others' (SPDZ's commitment round is not
needed with a single honest verifier). Members also report a digest of the
key each client's ε opened under, so a client that sends different ε to
different members is named instead of failing the check anonymously.

Trust. The dealer is a trusted third party, as PySyft 0.2's crypto provider
and CrypTen's TTP are: it knows α and every mask r_c, so it could shift an
input undetected, and together with any one member (who sees ε_c) it could
unmask x_c. fedsim draws the dealer at random among the round's workers
outside the committee. What the MACs do guarantee: a committee member that
alters its share of the sum, or the MAC share behind it, is caught except with
probability ≈ 2^-60. Privacy against the coordinator is as for plain secure
aggregation (ε_c, the masks and the key shares all travel sealed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from mpc.errors import MPCError
from mpc.field import P, field_decode
from mpc.flatten import float_keys, unflatten_average, vector_length
from mpc.mac import reconstruct_field
from mpc.protocols.base import Protocol, ProtocolRun, Step
from mpc.protocols.release import Release, abandon_session, release_args
from mpc.protocols.secure_aggregation.coordinator import (
    SecureAggregate,
    SecureInput,
    check_cohort,
    reveal_sum_shares,
)
from mpc.protocols.secure_aggregation_mac import steps as party
from mpc.protocols.sessions import exchange_keys
from workers.base import Worker

__all__ = ["SECURE_AGGREGATION_MAC", "secure_average_mac"]

_FRACTIONAL_BITS = 16


def _committee_args(run: ProtocolRun) -> dict[str, object]:
    committee = run.workers("committee")
    return {
        "committee": [m.id for m in committee],
        "public_keys": [run.public_key(m) for m in committee],
    }


def _deal(run: ProtocolRun) -> None:
    clients = run.workers("clients")
    reply = run.one("dealer").party_op(
        party.DEAL,
        session=run.session,
        clients=[c.id for c in clients],
        client_public_keys=[run.public_key(c) for c in clients],
        **_committee_args(run),
    )
    run.state["alpha_sealed"] = reply["alpha_sealed"]
    run.state["seed_sealed"] = reply["seed_sealed"]


def _input(run: ProtocolRun) -> None:
    dealer = run.one("dealer")
    inputs: dict[str, SecureInput] = run.state["inputs"]
    members = _committee_args(run)

    def contribute(position: int) -> dict[str, object]:
        client = run.workers("clients")[position]
        item = inputs[client.id]
        reply = client.party_op(
            party.INPUT,
            session=run.session,
            dealer=dealer.id,
            dealer_public_key=run.public_key(dealer),
            dealer_ciphertext=run.state["seed_sealed"][position],
            state_id=item.state_id,
            weighting=run.state["weighting"],
            keys=run.state["keys"],
            clients=len(run.workers("clients")),
            fractional_bits=_FRACTIONAL_BITS,
            **members,
            **release_args(run, client),
        )
        run.state["shared"].add(client.id)
        if reply["length"] != run.state["length"]:
            raise MPCError(
                f"{client.id!r} shared {reply['length']} values, expected {run.state['length']}"
            )
        return reply

    run.state["eps"] = run.each(list(range(len(run.workers("clients")))), contribute)


def _relay(run: ProtocolRun) -> None:
    dealer = run.one("dealer")
    clients = run.workers("clients")

    def deliver(index: int) -> list[str]:
        member = run.workers("committee")[index]
        member.party_op(
            party.ACCEPT_KEY,
            session=run.session,
            dealer=dealer.id,
            dealer_public_key=run.public_key(dealer),
            dealer_ciphertext=run.state["alpha_sealed"][index],
            **_committee_args(run),
        )
        digests = []
        for position, client in enumerate(clients):
            reply = member.party_op(
                party.ACCEPT,
                session=run.session,
                client=client.id,
                length=run.state["length"],
                client_public_key=run.public_key(client),
                client_ciphertext=run.state["eps"][position]["sealed"][index],
                box=run.state["eps"][position]["box"],
            )
            digests.append(str(reply["key_digest"]))
        return digests

    by_member = run.each(list(range(len(run.workers("committee")))), deliver)
    for key in ("eps", "seed_sealed", "alpha_sealed"):
        del run.state[key]
    # Every member must have opened a client's ε with the same one-time key: one
    # that sealed different keys would make the MAC check fail without saying
    # who cheated.
    for position, client in enumerate(clients):
        if len({digests[position] for digests in by_member}) != 1:
            raise MPCError(
                f"client {client.id!r} sent different masked inputs to the committee "
                "members; the round is aborted"
            )


def _mask(run: ProtocolRun) -> None:
    """The dealer's shares of R = Σ r_c and α·R, over the clients every member added."""
    dealer = run.one("dealer")
    length = run.state["length"]
    sealed = dealer.party_op(
        party.DEAL_SHARES,
        session=run.session,
        contributors=[c.id for c in run.workers("clients")],
        length=length,
        lead=len(run.workers("committee")) - 1,  # member 0 already adds Σε
        **_committee_args(run),
    )["sealed"]
    assert isinstance(sealed, list)

    def accept(index: int) -> None:
        run.workers("committee")[index].party_op(
            party.ACCEPT_SHARES,
            session=run.session,
            dealer=dealer.id,
            length=length,
            dealer_public_key=run.public_key(dealer),
            dealer_ciphertext=sealed[index],
        )

    run.each(list(range(len(run.workers("committee")))), accept)


def _open(run: ProtocolRun) -> None:
    run.state["opened"] = reconstruct_field(reveal_sum_shares(run, party.REVEAL))


def _check(run: ProtocolRun) -> None:
    opened = run.state["opened"]
    rho_seed = torch.frombuffer(bytearray(os.urandom(32)), dtype=torch.uint8)  # drawn after opening

    def sigma(member: Worker) -> int:
        value = member.party_op(party.CHECK, session=run.session, opened=opened, rho_seed=rho_seed)[
            "sigma"
        ]
        if not isinstance(value, int) or not 0 <= value < P:
            raise MPCError(f"{member.id!r} returned no MAC check value")
        return value

    sigmas = run.each(list(run.workers("committee")), sigma)
    if sum(sigmas) % P != 0:
        raise MPCError(
            "MAC check failed on the opened sum of secure aggregation: a committee member "
            "altered its share (or a share was corrupted in transit); the round is aborted "
            "and no model is written"
        )
    run.state["total"] = field_decode(opened, _FRACTIONAL_BITS)


SECURE_AGGREGATION_MAC = Protocol(
    "secure-aggregation-mac",
    roles=("clients", "committee", "dealer"),
    steps=(
        Step("keys", "clients", exchange_keys),
        Step("deal", "dealer", _deal),
        Step("input", "clients", _input),
        Step("relay", "committee", _relay),
        Step("mask", "dealer", _mask),
        Step("open", "committee", _open, opens=True),
        Step("check", "committee", _check, opens=True),
    ),
    abandon=abandon_session,
)


def secure_average_mac(
    inputs: Sequence[SecureInput],
    committee: Sequence[Worker],
    dealer: Worker,
    template: Mapping[str, torch.Tensor],
    *,
    parallel: bool = False,
    weighting: str = "samples",
    min_cohort: int = 2,
    releases: dict[str, Release] | None = None,
) -> SecureAggregate:
    """Like :func:`~mpc.protocols.secure_aggregation.coordinator.secure_average`, MAC-checked."""
    if len(committee) < 2:
        raise MPCError(
            f"secure aggregation needs a committee of >= 2 workers, got {len(committee)}"
        )
    if dealer.id in {m.id for m in committee}:
        raise MPCError(
            f"the dealer {dealer.id!r} may not sit on the committee: it knows the MAC key"
        )
    check_cohort(len(inputs), min_cohort)
    run = SECURE_AGGREGATION_MAC.bind(
        {
            "clients": [item.worker for item in inputs],
            "committee": list(committee),
            "dealer": [dealer],
        },
        parallel=parallel,
    )
    run.state.update(
        inputs={item.worker.id: item for item in inputs},
        length=vector_length(template),
        keys=float_keys(template),
        weighting=weighting,
        min_cohort=min_cohort,
        releases=releases if releases is not None else {},
        shared=set(),
    )
    run.run()
    expected = float(sum(item.weight for item in inputs))
    state, weight = unflatten_average(run.state.pop("total"), template, expected)
    return SecureAggregate(state, weight, dict(run.seconds), run)
