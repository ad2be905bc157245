"""Malicious-secure aggregation: secure aggregation whose opened sum carries SPDZ MACs.

Plain secure aggregation (``mpc.secure_aggregation``) trusts the committee to
return its shares faithfully: a member that adds δ to its share silently
shifts the global model by δ. Here every share is authenticated under a MAC
key α that no single worker knows (SPDZ; Damgård, Pastro, Smart, Zakarias,
CRYPTO 2012), over F_p with p = 2^61 − 1 (``mpc.field``; Z/2^64 admits
cheap forgeries, see ``mpc.mac``), and the opening is checked before the sum
is used. Roles: ``clients``, ``committee`` (k members) and a ``dealer`` (a
worker outside the committee, trusted like PySyft's crypto provider).

1. ``keys``    — every worker makes a session key pair (``mpc.channel``);
2. ``deal``    — the dealer draws α, seals α_j for member j, and per client c a
   mask r_c (its seed sealed for c) with shares of r_c and α·r_c sealed for
   the members;
3. ``input``   — client c publishes ε_c = x_c − r_c, sealed for each member;
4. ``relay``   — members open their key share, then each client's ε_c and
   mask shares, and accumulate [Σx] and [αΣx] (MACs are linear);
5. ``open``    — members reveal their shares of Σx; the coordinator adds them;
6. ``check``   — the coordinator draws fresh coefficients ρ (after the
   opening), members return σ_j = Σ_k ρ_k(m_j,k − α_j·y_k), and Σσ_j must be 0.

A failed check raises :class:`~mpc.errors.MPCError` naming it; the caller
never sees the sum. The coordinator is the verifier here (it collects every
σ_j before any is revealed to another party, so no member can adapt its σ to
the others': the commitment round of SPDZ is not needed with a single honest
verifier). Privacy is as for plain secure aggregation: ε_c travels sealed, so
only a member colluding with the dealer could unmask it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from mpc.errors import MPCError
from mpc.field import P, field_decode
from mpc.flatten import unflatten_average, vector_length
from mpc.mac import reconstruct_field
from mpc.protocol import Protocol, ProtocolRun, Step
from mpc.secure_aggregation import (
    SecureAggregate,
    SecureInput,
    exchange_keys,
    peer_key,
)
from workers.base import Worker

__all__ = ["SECURE_AGGREGATION_MAC", "secure_average_mac"]

_FRACTIONAL_BITS = 16


def _committee_args(run: ProtocolRun) -> dict[str, object]:
    committee = run.workers("committee")
    return {
        "committee": [m.id for m in committee],
        "public_keys": [peer_key(run, m) for m in committee],
    }


def _deal(run: ProtocolRun) -> None:
    dealer = run.one("dealer")
    members = _committee_args(run)
    run.state["alpha_sealed"] = dealer.party_op(
        "secagg.mac.deal_key", session=run.session, **members
    )["sealed"]
    masks = []
    for position, client in enumerate(run.workers("clients")):
        masks.append(
            dealer.party_op(
                "secagg.mac.deal_mask",
                session=run.session,
                client=client.id,
                client_public_key=peer_key(run, client),
                length=run.state["length"],
                lead=position % len(run.workers("committee")),
                **members,
            )
        )
    run.state["masks"] = masks


def _input(run: ProtocolRun) -> None:
    dealer = run.one("dealer")
    inputs: dict[str, SecureInput] = run.state["inputs"]
    members = _committee_args(run)

    def contribute(position: int) -> list[torch.Tensor]:
        client = run.workers("clients")[position]
        item = inputs[client.id]
        state_id = item.state if isinstance(item.state, str) else item.state._ref(client).obj_id
        reply = client.party_op(
            "secagg.mac.input",
            session=run.session,
            dealer=dealer.id,
            dealer_public_key=peer_key(run, dealer),
            dealer_ciphertext=run.state["masks"][position]["client_sealed"],
            state_id=state_id,
            weight=item.weight,
            fractional_bits=_FRACTIONAL_BITS,
            **members,
        )
        if reply["length"] != run.state["length"]:
            raise MPCError(
                f"{client.id!r} shared {reply['length']} values, expected {run.state['length']}"
            )
        sealed = reply["sealed"]
        assert isinstance(sealed, list)
        return sealed

    run.state["eps"] = run.each(list(range(len(run.workers("clients")))), contribute)


def _relay(run: ProtocolRun) -> None:
    dealer = run.one("dealer")

    def deliver(index: int) -> None:
        member = run.workers("committee")[index]
        dealer_key = peer_key(run, dealer)
        member.party_op(
            "secagg.mac.accept_key",
            session=run.session,
            dealer=dealer.id,
            dealer_public_key=dealer_key,
            dealer_ciphertext=run.state["alpha_sealed"][index],
        )
        for position, client in enumerate(run.workers("clients")):
            member.party_op(
                "secagg.mac.accept",
                session=run.session,
                client=client.id,
                dealer=dealer.id,
                index=index,
                length=run.state["length"],
                client_public_key=peer_key(run, client),
                client_ciphertext=run.state["eps"][position][index],
                dealer_public_key=dealer_key,
                dealer_ciphertext=run.state["masks"][position]["member_sealed"][index],
            )

    run.each(list(range(len(run.workers("committee")))), deliver)
    for key in ("eps", "masks", "alpha_sealed"):
        del run.state[key]


def _open(run: ProtocolRun) -> None:
    clients = len(run.workers("clients"))

    def reveal(member: Worker) -> torch.Tensor:
        reply = member.party_op("secagg.mac.reveal", session=run.session)
        if reply["count"] != clients:
            raise MPCError(f"{member.id!r} summed {reply['count']} inputs, expected {clients}")
        share = reply["sum_share"]
        if not isinstance(share, torch.Tensor) or share.dtype != torch.int64:
            raise MPCError(f"{member.id!r} returned no field share")
        return share

    run.state["opened"] = reconstruct_field(run.each(list(run.workers("committee")), reveal))


def _check(run: ProtocolRun) -> None:
    opened = run.state["opened"]
    rho_seed = torch.frombuffer(bytearray(os.urandom(32)), dtype=torch.uint8)  # drawn after opening

    def sigma(member: Worker) -> int:
        value = member.party_op(
            "secagg.mac.check", session=run.session, opened=opened, rho_seed=rho_seed
        )["sigma"]
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
        Step("open", "committee", _open),
        Step("check", "committee", _check),
    ),
)


def secure_average_mac(
    inputs: Sequence[SecureInput],
    committee: Sequence[Worker],
    dealer: Worker,
    template: Mapping[str, torch.Tensor],
    *,
    parallel: bool = False,
) -> SecureAggregate:
    """Like :func:`mpc.secure_aggregation.secure_average`, with every share MAC-checked."""
    if len(committee) < 2:
        raise MPCError(
            f"secure aggregation needs a committee of >= 2 workers, got {len(committee)}"
        )
    if dealer.id in {m.id for m in committee}:
        raise MPCError(
            f"the dealer {dealer.id!r} may not sit on the committee: it knows the MAC key"
        )
    if not inputs:
        raise MPCError("secure aggregation needs at least one client")
    run = SECURE_AGGREGATION_MAC.bind(
        {
            "clients": [item.worker for item in inputs],
            "committee": list(committee),
            "dealer": [dealer],
        },
        parallel=parallel,
    )
    run.state.update(
        inputs={item.worker.id: item for item in inputs}, length=vector_length(template)
    )
    run.run()
    state, weight = unflatten_average(run.state.pop("total"), template)
    return SecureAggregate(state, weight, dict(run.seconds), run)
