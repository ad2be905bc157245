"""Party steps of MAC-authenticated secure aggregation (``--mac``; the driver is ``coordinator``).

SPDZ's input protocol (Damgård et al. 2012) over F_p, p = 2^61 − 1: a dealer
gives client c a random mask r_c (as a ChaCha20 seed); the client publishes
ε_c = x_c − r_c to the committee only; and the dealer gives the committee
shares of R = Σ_c r_c and α·R (α: a MAC key secret-shared among the
committee). Member j then holds [Σx]_j = [R]_j (+ Σε for member 0) and
[αΣx]_j = [αR]_j + α_j·Σε. Only the sum is ever authenticated, which is all
that is opened: the dealer deals one set of shares per session rather than
one per client, after the inputs are in and over exactly the clients whose ε
every member added (the shares name them; a member refuses others). The
opened total is then checked against the MAC shares (``mpc.mac.mac_check_share``):
a member that alters its share by δ ≠ 0 passes only by guessing α·δ,
probability ≈ 2^-60.

As with plain secure aggregation, k − 1 members get PRG seeds for their
dealer shares and one member (the *lead*) gets the explicit vectors.

Vault keys under ``<session>/``: ``alpha`` (this member's α_j), ``index``
(its place on the committee), ``eps`` (running Σε), ``from/<c>`` (clients
counted), ``r`` and ``m`` (its shares of R and α·R), ``opened`` (set once it
has revealed its share); the dealer's ``seed/<c>`` and ``shares_dealt``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping

import torch

from mpc.channel import once_key_digest, open_once, seal_once
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
from mpc.protocols.release import apply_release, spending_for
from mpc.protocols.secure_aggregation.steps import check_header, cohort_arg, committee_arg, header
from mpc.protocols.sessions import open_from, party_rng, seal_for
from mpc.random import SecureRandom
from workers.codec import Value
from workers.contributions import DIGEST_BYTES, WEIGHTINGS
from workers.party import (
    Party,
    PartyError,
    arg_bytes,
    arg_id,
    arg_int,
    arg_list,
    arg_str,
    arg_tensor,
    check_tensor,
    register_party_steps,
    session_arg,
    tensor_from_bytes,
)

__all__ = [
    "ACCEPT",
    "ACCEPT_KEY",
    "ACCEPT_SHARES",
    "CHECK",
    "DEAL",
    "DEAL_SHARES",
    "INPUT",
    "REVEAL",
]

# The party steps, by the name the coordinator's driver sends.
DEAL = "secagg.mac.deal"
DEAL_SHARES = "secagg.mac.deal_shares"
INPUT = "secagg.mac.input"
ACCEPT_KEY = "secagg.mac.accept_key"
ACCEPT = "secagg.mac.accept"
ACCEPT_SHARES = "secagg.mac.accept_shares"
REVEAL = "secagg.mac.reveal"
CHECK = "secagg.mac.check"

_SEED_BYTES = 32
_SEEDS = b"S"  # seeds of this member's r and α·r shares
_FULL = b"F"  # the lead's explicit r and α·r shares
_CONTRIBUTORS_TAG = b"fedsim/mac/contributors\x00"


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


def _deal(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Dealer: draw the session's MAC key α, seal a share α_j for each member and a
    mask seed for each client (its mask r_c is the seed's ChaCha20 stream)."""
    session = session_arg(args)
    if party.has(f"{session}/alpha"):
        raise PartyError(f"the MAC key of session {session!r} is already dealt")
    members, keys = committee_arg(args)
    clients = _ids(args, "clients")
    client_keys = arg_list(args, "client_public_keys", max_length=MAX_SUMMANDS)
    if len(client_keys) != len(clients):
        raise PartyError("need one public key per client")
    alpha, shares = share_mac_key(len(members), party_rng(party))
    party.keep(f"{session}/alpha", alpha)
    sealed_alpha = [
        _seal(party, session, m, k, struct.pack("<q", s), "mac/alpha")
        for m, k, s in zip(members, keys, shares, strict=True)
    ]
    sealed_seeds = []
    for client, key in zip(clients, client_keys, strict=True):
        seed = os.urandom(_SEED_BYTES)
        party.keep(f"{session}/seed/{client}", seed)
        sealed_seeds.append(_seal(party, session, client, _key_tensor(key), seed, "mac/mask"))
    return {"alpha_sealed": sealed_alpha, "seed_sealed": sealed_seeds}


def _deal_shares(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Dealer, once per session: shares of R = Σ r_c and α·R over exactly the named
    ``contributors``, sealed for each member (seeds, or the explicit vectors for
    the lead), each naming the contributors so a member can check them."""
    session = session_arg(args)
    alpha: int = party.secret(f"{session}/alpha")
    if party.has(f"{session}/shares_dealt"):
        raise PartyError(f"the mask shares of session {session!r} are already dealt")
    members, keys = committee_arg(args)
    contributors = _ids(args, "contributors")
    length = _session_length(party, session, arg_int(args, "length", low=1, high=MAX_VECTOR))
    lead = arg_int(args, "lead", low=0, high=len(members) - 1)
    if len(contributors) < 2:
        raise PartyError(f"refusing masks for a sum of {len(contributors)} client(s)")
    for client in contributors:
        if not party.has(f"{session}/seed/{client}"):
            raise PartyError(f"no mask was dealt to {client!r} in session {session!r}")
    party.keep(f"{session}/shares_dealt", True)
    r = _masks(party, session, contributors, length)
    m = field_mul_scalar(r, alpha)
    named = contributors_digest(contributors)
    payloads: list[bytes] = []
    for index in range(len(members)):
        if index == lead:
            payloads.append(b"")
            continue
        seeds = os.urandom(2 * _SEED_BYTES)
        r = field_sub(r, field_random((length,), SecureRandom(seeds[:_SEED_BYTES])))
        m = field_sub(m, field_random((length,), SecureRandom(seeds[_SEED_BYTES:])))
        payloads.append(named + _SEEDS + seeds)
    payloads[lead] = named + _FULL + r.numpy().tobytes() + m.numpy().tobytes()
    sealed = [
        _seal(party, session, member, key, payload, "mac/shares")
        for member, key, payload in zip(members, keys, payloads, strict=True)
    ]
    return {"sealed": sealed}


def _masks(party: Party, session: str, clients: list[str], length: int) -> torch.Tensor:
    """Σ r_c over ``clients``, each r_c expanded from the seed dealt to c."""
    total = None
    for client in clients:
        r = field_random((length,), SecureRandom(party.secret(f"{session}/seed/{client}")))
        total = r if total is None else field_add(total, r)
    assert total is not None
    return total


def contributors_digest(clients: list[str]) -> bytes:
    """SHA-256 of a set of client ids (order-free, length-prefixed so no two sets collide)."""
    digest = hashlib.sha256(_CONTRIBUTORS_TAG)
    for client in sorted(clients):
        encoded = client.encode()
        digest.update(len(encoded).to_bytes(4, "big") + encoded)
    return digest.digest()


def _ids(args: Mapping[str, Value], name: str) -> list[str]:
    ids = [arg_id({"id": c}, "id") for c in arg_list(args, name, max_length=MAX_SUMMANDS)]
    if len(set(ids)) != len(ids):
        raise PartyError(f"{name} lists a client twice")
    return ids


def _session_length(party: Party, session: str, length: int) -> int:
    """The session's vector length: fixed by its first use, then enforced."""
    key = f"{session}/length"
    if party.has(key) and party.secret(key) != length:
        raise PartyError(f"session {session!r} has vectors of {party.secret(key)}, not {length}")
    party.keep(key, length)
    return length


def _key_tensor(value: Value) -> Value:
    return check_tensor(value, "public key", dtype=torch.uint8, ndim=1)


# ------------------------------------------------------------------ client


def _input(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Client: open the dealer's mask seed and publish ε = x − r to the committee only,
    behind the header of what the client vouches for (weighting, training digest).

    ε goes into one box under a one-time key (``mpc.channel.seal_once``) and
    the key is sealed for each member: one encryption of the vector, not one
    per member, and members that report the same key digest hold the same ε.
    Once per session: a second ε under the same mask would reveal x's
    difference; and the state is consumed, so no other session gets it.
    """
    session = session_arg(args)
    if party.has(f"{session}/input"):
        raise PartyError(f"{party.worker_id!r} already gave its input in session {session!r}")
    dealer = arg_id(args, "dealer")
    seed = _open(party, session, args, dealer, "dealer", "mac/mask")
    if len(seed) != _SEED_BYTES:
        raise PartyError("a mask seed is 32 bytes")
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
    once, box = seal_once(eps, session=session, sender=party.worker_id, label="mac/eps")
    sealed = [
        _seal(party, session, m, k, once, "mac/eps-key") for m, k in zip(members, keys, strict=True)
    ]
    return {"box": tensor_from_bytes(box), "sealed": sealed, "length": int(value.numel())}


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
    """Member: add one client's ε to the running Σε.

    Returns the digest of the client's one-time key: every member must have
    opened the box with the same key, which the coordinator checks before
    dealing the masks (a client that sealed different keys for different
    members is named, rather than failing the MAC check anonymously).
    """
    session = session_arg(args)
    client = arg_id(args, "client")
    party.secret(f"{session}/index")  # the MAC key share came first
    length = _session_length(party, session, arg_int(args, "length", low=1, high=MAX_VECTOR))
    if party.has(f"{session}/from/{client}") or party.has(f"{session}/r"):
        raise PartyError(f"input of {client!r} already counted, or the masks already dealt")
    party.require_room(2)
    once = _open(party, session, args, client, "client", "mac/eps-key")
    eps_bytes = open_once(
        once, arg_bytes(args, "box"), session=session, sender=client, label="mac/eps"
    )
    eps = _vector(check_header(party, session, client, eps_bytes), length, "ε")
    party.keep(f"{session}/from/{client}", True)
    key = f"{session}/eps"
    party.keep(key, field_add(party.secret(key), eps) if party.has(key) else eps)
    return {"key_digest": once_key_digest(once)}


def _accept_shares(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Member: take the dealer's shares of R and α·R, which must name exactly the
    clients whose ε this member added; no ε is accepted after."""
    session = session_arg(args)
    length = _session_length(party, session, arg_int(args, "length", low=1, high=MAX_VECTOR))
    if party.has(f"{session}/r"):
        raise PartyError(f"the mask shares of session {session!r} are already set")
    payload = _open(party, session, args, arg_id(args, "dealer"), "dealer", "mac/shares")
    named, rest = payload[:DIGEST_BYTES], payload[DIGEST_BYTES:]
    kind, body = rest[:1], rest[1:]
    counted = [key.rsplit("/", 1)[1] for key in party.keys(f"{session}/from/")]
    if named != contributors_digest(counted):
        raise PartyError(
            f"the dealer's masks cover other clients than the {len(counted)} whose input "
            "this member added: refused"
        )
    party.require_room(2)
    if kind == _SEEDS and len(body) == 2 * _SEED_BYTES:
        r = field_random((length,), SecureRandom(body[:_SEED_BYTES]))
        m = field_random((length,), SecureRandom(body[_SEED_BYTES:]))
    elif kind == _FULL and len(body) == 16 * length:
        r = _vector(body[: 8 * length], length, "mask share")
        m = _vector(body[8 * length :], length, "MAC share")
    else:
        raise PartyError("the dealer's mask shares are malformed")
    party.keep(f"{session}/r", r)
    party.keep(f"{session}/m", m)
    return {}


def _reveal(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Member: this member's share of the sum; its MAC share stays for the check.

    args: session, contributors, min_cohort: refused below the minimum cohort
    or over other clients than those named (``mpc.protocols.secure_aggregation.steps``) and,
    like every step after it, only once per session.
    """
    session = session_arg(args)
    if party.has(f"{session}/opened"):
        raise PartyError(f"session {session!r} is already opened")
    if party.ended(session) == "abandoned":
        raise PartyError(f"session {session!r} was abandoned: its sum is never revealed")
    if not party.has(f"{session}/r"):
        raise PartyError(f"session {session!r} has no mask shares yet: nothing to reveal")
    count = len(party.keys(f"{session}/from/"))
    cohort_arg(party, args, session, count)
    share = party.secret(f"{session}/r")
    if party.secret(f"{session}/index") == 0:  # member 0 holds Σε in its share of Σx
        share = field_add(share, party.secret(f"{session}/eps"))
    party.keep(f"{session}/opened", True)
    party.end_session(session, "revealed")
    return {"sum_share": share, "count": count}


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


register_party_steps(
    {
        DEAL: _deal,
        DEAL_SHARES: _deal_shares,
        INPUT: _input,
        ACCEPT_KEY: _accept_key,
        ACCEPT: _accept,
        ACCEPT_SHARES: _accept_shares,
        REVEAL: _reveal,
        CHECK: _check,
    }
)
