"""Party steps of secure aggregation (the driver is ``coordinator``).

A client secret-shares its sample-weighted update among a committee of k
workers; each committee member adds up the shares it receives; the
coordinator adds the k sums and learns only the total. Shares travel through
the coordinator sealed for their recipient (``mpc.channel``).

Share compression (as in Bonawitz et al. 2017's PRG-expanded masks): of a
client's k additive shares, k − 1 are ChaCha20 streams, so the client sends
their 32-byte seeds; only one share — the update minus the k − 1 streams — is
a full vector. Which member gets the full one rotates with the client, so the
committee's decryption work stays balanced. A client's cost is therefore one
vector plus k − 1 seeds, flat in the number of workers.

Against a coordinator that cheats, each share carries a header that the
client vouches for (``workers.contributions``): the weighting rule and the
digest of what the client trained from. A member adds only shares whose
header equals the session's first, and reveals its sum only over exactly the
contributors the coordinator names, at least the minimum cohort (the run's
``min_cohort``, never below the worker's own floor). Members need not talk to
each other to agree: a client whose shares reached only some members adds a
term to the opened total that is uniformly random to the coordinator (the
missing members' shares mask it), so the total is useful only when every
member summed the same contributors.

Vault keys, all under ``<session>/``: ``key`` (this party's X25519 pair, from
the generic ``keygen`` step),
``sum`` (the running int64 sum of received shares), ``from/<sender>``
(a sender already counted, so a replayed share cannot be added twice),
``header`` (the weighting and training digest every share must carry).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from mpc.flatten import MAX_VECTOR, flatten_update
from mpc.protocols.release import apply_release, spending_for
from mpc.protocols.sessions import open_from, seal_for, session_key
from mpc.random import SecureRandom
from mpc.ring import FixedPointEncoder
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
    check_tensor,
    register_party_steps,
    session_arg,
    tensor_from_bytes,
)

__all__ = [
    "ACCEPT",
    "HEADER_BYTES",
    "MAX_COMMITTEE",
    "REVEAL",
    "SHARE",
    "check_header",
    "cohort_arg",
    "committee_arg",
    "header",
]

# The party steps, by the name the coordinator's driver sends.
SHARE = "secagg.share"
ACCEPT = "secagg.accept"
REVEAL = "secagg.reveal"

_SEED = b"S"  # payload kinds: a 32-byte ChaCha20 seed, or a full share
_FULL = b"F"
_SEED_BYTES = 32
_LABEL = "secagg/share"
MAX_COMMITTEE = 64


def committee_arg(args: Mapping[str, Value]) -> tuple[list[str], list[Value]]:
    """The ``committee`` ids and their ``public_keys``: >= 2 distinct members, a key each."""
    members = [
        arg_id({"id": m}, "id") for m in arg_list(args, "committee", max_length=MAX_COMMITTEE)
    ]
    keys = arg_list(args, "public_keys", max_length=MAX_COMMITTEE)
    if len(members) < 2 or len(keys) != len(members) or len(set(members)) != len(members):
        raise PartyError("need >= 2 distinct committee members and one public key each")
    for i, public in enumerate(keys):
        check_tensor(public, f"public_keys[{i}]", dtype=torch.uint8, ndim=1)
    return members, keys


def header(weighting: str, digest: bytes) -> bytes:
    """What a client vouches for in every share: its weighting rule and training digest."""
    return bytes([WEIGHTINGS.index(weighting)]) + digest


HEADER_BYTES = 1 + DIGEST_BYTES


def check_header(party: Party, session: str, sender: str, payload: bytes) -> bytes:
    """``payload`` without its header, which must equal the session's first one.

    Every contributor to a sum must use the same weighting and have trained
    the same model the same way; the first share accepted fixes both.
    """
    got, rest = payload[:HEADER_BYTES], payload[HEADER_BYTES:]
    if len(got) != HEADER_BYTES or got[0] >= len(WEIGHTINGS):
        raise PartyError(f"share from {sender!r} carries no contribution header")
    key = f"{session}/header"
    if party.has(key) and party.secret(key) != got:
        raise PartyError(
            f"share from {sender!r} was weighted or trained differently from the other "
            f"contributors of session {session!r}: refused"
        )
    party.keep(key, got)
    return rest


def cohort_arg(party: Party, args: Mapping[str, Value], session: str, count: int) -> None:
    """Refuse to reveal a sum unless it holds exactly the named ``contributors``, at least
    the minimum cohort (``min_cohort``, raised to this worker's own floor)."""
    named = [arg_id({"id": c}, "id") for c in arg_list(args, "contributors", max_length=1 << 20)]
    least = max(arg_int(args, "min_cohort", low=2, high=1 << 20), party.min_cohort)
    if count < least:
        raise PartyError(
            f"refusing to reveal a sum of {count} contribution(s): the minimum cohort is {least}"
        )
    counted = {key.rsplit("/", 1)[1] for key in party.keys(f"{session}/from/")}
    if len(set(named)) != len(named) or set(named) != counted:
        raise PartyError(
            f"refusing to reveal: the contributors named ({len(named)}) are not the "
            f"{count} this member summed"
        )


def _share(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Encode weight·update, split it into k additive shares, seal one per committee member.

    args: session, state_id (this worker's sealed trained state), weighting
    ("samples" or "uniform": the weight is the worker's own, never the
    coordinator's), keys (the global model's floating tensors, in order),
    clients (how many clients the sum will hold), committee (member ids),
    public_keys (theirs, same order), lead (the member that gets the full
    share), fractional_bits. Once per session: sharing twice would give a
    member two shares of one update; and the state is consumed, so no other
    session can share it again.
    """
    session = session_arg(args)
    session_key(party, session)  # fails before anything is written if keygen did not run
    if party.has(f"{session}/shared"):
        raise PartyError(f"{party.worker_id!r} already shared its update in session {session!r}")
    weighting = arg_str(args, "weighting")
    clients = arg_int(args, "clients", low=2, high=1 << 20)
    layout = [str(k) for k in arg_list(args, "keys", max_length=10_000)]
    members, public_keys = committee_arg(args)
    lead = arg_int(args, "lead", low=0, high=len(members) - 1)
    encoder = FixedPointEncoder(arg_int(args, "fractional_bits", low=0, high=30))
    if weighting not in WEIGHTINGS:
        raise PartyError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    state_id = arg_str(args, "state_id")
    apply_release(party, args, state_id)
    spending = spending_for(party, session, members, public_keys)
    state, contribution = party.take_contribution(state_id, spending)
    secret = encoder.encode(flatten_update(state, contribution.weight(weighting), layout))
    # The sum of `clients` vectors must not wrap around Z/2^64: each gets 1/clients of it.
    headroom = (1 << 62) // clients
    if secret.numel() and int(secret.abs().max()) >= headroom:
        raise PartyError(
            f"weighted update exceeds ±{headroom / encoder.scale:g}, the range that keeps "
            f"a sum of {clients} clients from wrapping around"
        )
    party.keep(f"{session}/shared", True)
    vouched = header(weighting, contribution.digest)
    full = secret.clone()
    payloads: list[bytes] = []
    for index in range(len(members)):
        if index == lead:
            payloads.append(b"")  # filled in below, once every stream is subtracted
            continue
        seed = os.urandom(_SEED_BYTES)
        full -= SecureRandom(seed).ring_elements(full.shape)  # int64: wraps mod 2^64
        payloads.append(vouched + _SEED + seed)
    payloads[lead] = vouched + _FULL + full.numpy().tobytes()
    ciphertexts = [
        tensor_from_bytes(seal_for(party, session, member, public, payload, label=_LABEL))
        for member, public, payload in zip(members, public_keys, payloads, strict=True)
    ]
    return {"ciphertexts": ciphertexts, "length": int(secret.numel())}


def _accept(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Open one client's sealed share and add it to this member's running sum.

    The first share fixes the session's vector length; each sender counts once,
    and nothing is accepted after the sum was revealed.
    """
    session = session_arg(args)
    if party.has(f"{session}/closed"):
        raise PartyError(f"session {session!r} is closed: its sum was revealed")
    session_key(party, session)  # fails before anything is written if keygen did not run
    sender = arg_id(args, "sender")
    length = arg_int(args, "length", low=1, high=MAX_VECTOR)
    if party.has(f"{session}/from/{sender}"):
        raise PartyError(f"share from {sender!r} already counted in session {session!r}")
    total = party.secret(f"{session}/sum") if party.has(f"{session}/sum") else None
    if total is not None and total.numel() != length:
        raise PartyError(f"share from {sender!r} has length {length}, the sum {total.numel()}")
    party.require_room(2)
    sealed = arg_bytes(args, "ciphertext")
    payload = open_from(party, session, sender, args.get("sender_public_key"), sealed, label=_LABEL)
    payload = check_header(party, session, sender, payload)
    kind, body = payload[:1], payload[1:]
    if kind == _SEED and len(body) == _SEED_BYTES:
        share = SecureRandom(body).ring_elements((length,))
    elif kind == _FULL and len(body) == 8 * length:
        share = torch.frombuffer(bytearray(body), dtype=torch.int64)
    else:
        raise PartyError(f"share from {sender!r} does not hold {length} ring elements")
    party.keep(f"{session}/from/{sender}", True)
    party.keep(f"{session}/sum", share if total is None else total + share)
    return {"received": 1}


def _reveal(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """This member's share of the sum (uniformly random on its own), and how many it added.

    args: session, contributors (the client ids the sum must hold, exactly),
    min_cohort. Refused below the minimum cohort, or if the member summed other
    clients than those named. Closes the session: its key is dropped and no
    share is accepted after, so a coordinator cannot replay old shares into a
    second, smaller sum.
    """
    session = session_arg(args)
    if party.has(f"{session}/closed"):
        raise PartyError(f"session {session!r} is closed: its sum was revealed")
    if party.ended(session) == "abandoned":
        raise PartyError(f"session {session!r} was abandoned: its sum is never revealed")
    count = sum(1 for _ in party.keys(f"{session}/from/"))
    cohort_arg(party, args, session, count)
    total = party.secret(f"{session}/sum")
    party.forget(f"{session}/")
    party.keep(f"{session}/closed", True)
    party.end_session(session, "revealed")
    return {"sum_share": total, "count": count}


register_party_steps(
    {
        SHARE: _share,
        ACCEPT: _accept,
        REVEAL: _reveal,
    }
)
