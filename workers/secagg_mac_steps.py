"""Party steps of MAC-authenticated secure aggregation (``--mac``; ``mpc.secure_aggregation_mac``).

SPDZ's input protocol (Damgård et al. 2012) over F_p, p = 2^61 − 1: a dealer
gives client c a random mask r_c and the committee shares of r_c and α·r_c
(α: a MAC key secret-shared among the committee); the client publishes
ε_c = x_c − r_c to the committee only (sealed), and member j holds
[x_c]_j = [r_c]_j (+ ε_c for member 0) and [αx_c]_j = [αr_c]_j + ε_c·α_j.
Sums stay authenticated because MACs are linear. The opened total is then
checked against the MAC shares (``mpc.mac.mac_check_share``): a member that
alters its share by δ ≠ 0 passes only by guessing α·δ, probability ≈ 2^-60.

As with plain secure aggregation, k − 1 members get PRG seeds for their
dealer shares and one member (the *lead*) gets the explicit vectors.

Vault keys under ``<session>/``: ``alpha`` (this member's α_j), ``x``, ``m``,
``eps`` (running sums of value shares, MAC shares and published ε), ``from/<c>``
(clients counted), ``opened`` (set once the member has revealed its share).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping

import torch

from mpc.field import (
    MAX_SUMMANDS,
    P,
    check_field,
    field_add,
    field_encode,
    field_mul_scalar,
    field_random,
    field_sub,
)
from mpc.flatten import MAX_VECTOR, flatten_update
from mpc.mac import mac_check_share, random_coefficients, share_mac_key
from mpc.random import SecureRandom
from workers.codec import Value
from workers.contributions import WEIGHTINGS
from workers.party import (
    Party,
    PartyError,
    PartyStep,
    arg_bytes,
    arg_id,
    arg_int,
    arg_list,
    arg_str,
    arg_tensor,
    open_from,
    seal_for,
    session_arg,
    tensor_from_bytes,
)
from workers.release import apply_release, spending_for
from workers.secagg_steps import check_header, cohort_arg, committee_arg, header

__all__ = ["STEPS"]

_SEED_BYTES = 32
_SEEDS = b"S"  # seeds of this member's r and α·r shares
_FULL = b"F"  # the lead's explicit r and α·r shares


def _seal(
    party: Party, session: str, peer: str, public: Value, payload: bytes, label: str
) -> torch.Tensor:
    return tensor_from_bytes(seal_for(party, session, peer, public, payload, label=label))


def _open(
    party: Party, session: str, args: Mapping[str, Value], sender: str, prefix: str, label: str
) -> bytes:
    ciphertext = arg_bytes(args, f"{prefix}_ciphertext")
    public = args.get(f"{prefix}_public_key")
    return open_from(party, session, sender, public, ciphertext, label=label)


# ------------------------------------------------------------------ dealer


def _deal_key(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Dealer: draw the session's MAC key α and seal a share α_j for each member."""
    session = session_arg(args)
    if party.has(f"{session}/alpha"):
        raise PartyError(f"the MAC key of session {session!r} is already dealt")
    members, keys = committee_arg(args)
    alpha, shares = share_mac_key(len(members), party.rng)
    party.keep(f"{session}/alpha", alpha)
    sealed = [
        _seal(party, session, m, k, struct.pack("<q", s), "mac/alpha")
        for m, k, s in zip(members, keys, shares, strict=True)
    ]
    return {"sealed": sealed}


def _deal_mask(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Dealer: a mask r for one client (its seed sealed for the client), and shares of
    r and α·r sealed for each member (seeds, or the explicit vectors for the lead)."""
    session = session_arg(args)
    alpha: int = party.secret(f"{session}/alpha")
    members, keys = committee_arg(args)
    client = arg_id(args, "client")
    length = _session_length(party, session, arg_int(args, "length", low=1, high=MAX_VECTOR))
    lead = arg_int(args, "lead", low=0, high=len(members) - 1)
    if party.has(f"{session}/dealt/{client}"):
        raise PartyError(f"a mask for {client!r} is already dealt in session {session!r}")
    party.keep(f"{session}/dealt/{client}", True)
    seed = os.urandom(_SEED_BYTES)
    r = field_random((length,), SecureRandom(seed))
    m = field_mul_scalar(r, alpha)
    payloads: list[bytes] = []
    for index in range(len(members)):
        if index == lead:
            payloads.append(b"")
            continue
        seeds = os.urandom(2 * _SEED_BYTES)
        r = field_sub(r, field_random((length,), SecureRandom(seeds[:_SEED_BYTES])))
        m = field_sub(m, field_random((length,), SecureRandom(seeds[_SEED_BYTES:])))
        payloads.append(_SEEDS + seeds)
    payloads[lead] = _FULL + r.numpy().tobytes() + m.numpy().tobytes()
    return {
        "client_sealed": _seal(
            party, session, client, _arg_key(args, "client_public_key"), seed, "mac/mask"
        ),
        "member_sealed": [
            _seal(party, session, member, key, payload, f"mac/shares/{client}")
            for member, key, payload in zip(members, keys, payloads, strict=True)
        ],
    }


def _session_length(party: Party, session: str, length: int) -> int:
    """The session's vector length: fixed by its first use, then enforced."""
    key = f"{session}/length"
    if party.has(key) and party.secret(key) != length:
        raise PartyError(f"session {session!r} has vectors of {party.secret(key)}, not {length}")
    party.keep(key, length)
    return length


def _arg_key(args: Mapping[str, Value], name: str) -> Value:
    return arg_tensor(args, name, dtype=torch.uint8, ndim=1)


# ------------------------------------------------------------------ client


def _input(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Client: open the dealer's mask seed, publish ε = x − r to each member (sealed),
    behind the header of what the client vouches for (weighting, training digest).

    Once per session: a second ε under the same mask would reveal x's
    difference; and the state is consumed, so no other session gets it.
    """
    session = session_arg(args)
    if party.has(f"{session}/input"):
        raise PartyError(f"{party.worker_id!r} already gave its input in session {session!r}")
    dealer = arg_id(args, "dealer")
    seed = _open(party, session, args, dealer, "dealer", "mac/mask")
    weighting = arg_str(args, "weighting")
    if weighting not in WEIGHTINGS:
        raise PartyError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    arg_int(args, "clients", low=2, high=MAX_SUMMANDS)  # sums of more could pass p/2
    layout = [str(k) for k in arg_list(args, "keys", max_length=10_000)]
    bits = arg_int(args, "fractional_bits", low=0, high=30)
    members, keys = committee_arg(args)
    state_id = arg_str(args, "state_id")
    apply_release(party, args, state_id)
    spending = spending_for(party, session, members, keys)
    state, contribution = party.take_contribution(state_id, spending)
    value = field_encode(flatten_update(state, contribution.weight(weighting), layout), bits)
    party.keep(f"{session}/input", True)
    eps = header(weighting, contribution.digest) + (
        field_sub(value, field_random(value.shape, SecureRandom(seed))).numpy().tobytes()
    )
    sealed = [
        _seal(party, session, m, k, eps, "mac/eps") for m, k in zip(members, keys, strict=True)
    ]
    return {"sealed": sealed, "length": int(value.numel())}


# ------------------------------------------------------------------ committee


def _accept_key(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Member: take the dealer's MAC key share; fixes this member's place on the committee."""
    session = session_arg(args)
    if party.has(f"{session}/alpha"):
        raise PartyError(f"a MAC key share for session {session!r} is already set")
    members, _ = committee_arg(args)
    if party.worker_id not in members:
        raise PartyError(f"{party.worker_id!r} is not on the committee")
    payload = _open(party, session, args, arg_id(args, "dealer"), "dealer", "mac/alpha")
    if len(payload) != 8:
        raise PartyError("a MAC key share is one field element")
    (alpha,) = struct.unpack("<q", payload)
    if not 0 <= alpha < P:
        raise PartyError("MAC key share outside the field")
    party.keep(f"{session}/alpha", alpha)
    party.keep(f"{session}/index", members.index(party.worker_id))
    return {}


def _vector(data: bytes, length: int, what: str) -> torch.Tensor:
    if len(data) != 8 * length:
        raise PartyError(f"{what} does not hold {length} field elements")
    values = torch.frombuffer(bytearray(data), dtype=torch.int64)
    check_field(values, what)
    return values


def _accept(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Member: add one client's authenticated input to the running sums.

    Returns a digest of the client's ε: every member must have received the
    same ε, which the coordinator checks before opening (a client that sent
    different ones is named, rather than failing the MAC check anonymously).
    """
    session = session_arg(args)
    client, dealer = arg_id(args, "client"), arg_id(args, "dealer")
    index: int = party.secret(f"{session}/index")
    length = _session_length(party, session, arg_int(args, "length", low=1, high=MAX_VECTOR))
    if party.has(f"{session}/from/{client}") or party.has(f"{session}/opened"):
        raise PartyError(f"input of {client!r} already counted, or the sum already opened")
    party.require_room(4)
    eps_bytes = _open(party, session, args, client, "client", "mac/eps")
    eps = _vector(check_header(party, session, client, eps_bytes), length, "ε")
    shares = _open(party, session, args, dealer, "dealer", f"mac/shares/{client}")
    kind, body = shares[:1], shares[1:]
    if kind == _SEEDS and len(body) == 2 * _SEED_BYTES:
        r = field_random((length,), SecureRandom(body[:_SEED_BYTES]))
        m = field_random((length,), SecureRandom(body[_SEED_BYTES:]))
    elif kind == _FULL and len(body) == 16 * length:
        r = _vector(body[: 8 * length], length, "mask share")
        m = _vector(body[8 * length :], length, "MAC share")
    else:
        raise PartyError(f"dealer shares for {client!r} are malformed")
    party.keep(f"{session}/from/{client}", True)
    for name, term in (("x", field_add(r, eps) if index == 0 else r), ("m", m), ("eps", eps)):
        key = f"{session}/{name}"
        party.keep(key, field_add(party.secret(key), term) if party.has(key) else term)
    return {"eps_digest": hashlib.sha256(eps_bytes).hexdigest()}


def _reveal(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Member: this member's share of the sum; its MAC share stays for the check.

    args: session, contributors, min_cohort: refused below the minimum cohort
    or over other clients than those named (``workers.secagg_steps``) and,
    like every step after it, only once per session.
    """
    session = session_arg(args)
    if party.has(f"{session}/opened"):
        raise PartyError(f"session {session!r} is already opened")
    if party.ended(session) == "abandoned":
        raise PartyError(f"session {session!r} was abandoned: its sum is never revealed")
    cohort_arg(party, args, session, len(party.keys(f"{session}/from/")))
    count = len(party.keys(f"{session}/from/"))
    party.keep(f"{session}/opened", True)
    party.end_session(session, "revealed")
    return {"sum_share": party.secret(f"{session}/x"), "count": count}


def _check(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Member: σ_j = Σ_k ρ_k (m_j,k − α_j·y_k) for the opened sum y and coefficients ρ
    drawn by the coordinator after the opening (from ``rho_seed``)."""
    session = session_arg(args)
    opened = arg_tensor(args, "opened", dtype=torch.int64, ndim=1)
    alpha: int = party.secret(f"{session}/alpha")
    mac = field_add(
        party.secret(f"{session}/m"), field_mul_scalar(party.secret(f"{session}/eps"), alpha)
    )
    if opened.shape != mac.shape:
        raise PartyError(f"opened sum has {opened.numel()} values, the MAC shares {mac.numel()}")
    rho = random_coefficients(opened.numel(), SecureRandom(arg_bytes(args, "rho_seed")))
    party.forget(f"{session}/")  # one check per session: no second chance with other ρ
    return {"sigma": mac_check_share(opened, mac, alpha, rho)}


STEPS: dict[str, PartyStep] = {
    "secagg.mac.deal_key": _deal_key,
    "secagg.mac.deal_mask": _deal_mask,
    "secagg.mac.input": _input,
    "secagg.mac.accept_key": _accept_key,
    "secagg.mac.accept": _accept,
    "secagg.mac.reveal": _reveal,
    "secagg.mac.check": _check,
}
