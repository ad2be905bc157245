"""Party steps of secure aggregation (the worker side of ``mpc.secure_aggregation``).

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

Vault keys, all under ``<session>/``: ``key`` (this party's X25519 pair, from
the generic ``keygen`` step),
``sum`` (the running int64 sum of received shares), ``from/<sender>``
(a sender already counted, so a replayed share cannot be added twice).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from mpc.flatten import MAX_VECTOR, flatten_update
from mpc.random import SecureRandom
from mpc.ring import FixedPointEncoder
from workers.codec import Value
from workers.party import (
    Party,
    PartyError,
    PartyStep,
    arg_bytes,
    arg_id,
    arg_int,
    arg_list,
    arg_str,
    check_tensor,
    open_from,
    seal_for,
    session_arg,
    session_key,
    tensor_from_bytes,
)

__all__ = ["MAX_COMMITTEE", "STEPS", "committee_arg"]

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


def _share(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Encode weight·update, split it into k additive shares, seal one per committee member.

    args: session, state_id (this worker's sealed trained state), weight (its
    sample count), keys (the global model's floating tensors, in order),
    clients (how many clients the sum will hold), committee (member ids),
    public_keys (theirs, same order), lead (the member that gets the full
    share), fractional_bits. Once per session: sharing twice would give a
    member two shares of one update.
    """
    session = session_arg(args)
    session_key(party, session)  # fails before anything is written if keygen did not run
    if party.has(f"{session}/shared"):
        raise PartyError(f"{party.worker_id!r} already shared its update in session {session!r}")
    state = party.read_object(arg_str(args, "state_id"), sealed=True)
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise PartyError("state_id must name a state dict of tensors")
    weight = arg_int(args, "weight", low=1, high=2**31)
    clients = arg_int(args, "clients", low=2, high=1 << 20)
    layout = [str(k) for k in arg_list(args, "keys", max_length=10_000)]
    members, public_keys = committee_arg(args)
    lead = arg_int(args, "lead", low=0, high=len(members) - 1)
    encoder = FixedPointEncoder(arg_int(args, "fractional_bits", low=0, high=30))
    secret = encoder.encode(flatten_update(state, weight, layout))  # MPCError: out of range
    # The sum of `clients` vectors must not wrap around Z/2^64: each gets 1/clients of it.
    headroom = (1 << 62) // clients
    if secret.numel() and int(secret.abs().max()) >= headroom:
        raise PartyError(
            f"weighted update exceeds ±{headroom / encoder.scale:g}, the range that keeps "
            f"a sum of {clients} clients from wrapping around"
        )
    party.keep(f"{session}/shared", True)
    full = secret.clone()
    payloads: list[bytes] = []
    for index in range(len(members)):
        if index == lead:
            payloads.append(b"")  # filled in below, once every stream is subtracted
            continue
        seed = os.urandom(_SEED_BYTES)
        full -= SecureRandom(seed).ring_elements(full.shape)  # int64: wraps mod 2^64
        payloads.append(_SEED + seed)
    payloads[lead] = _FULL + full.numpy().tobytes()
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

    Refused for fewer than two shares — the "sum" would be one client's update.
    Closes the session: its key is dropped and no share is accepted after, so
    a coordinator cannot replay old shares into a second, smaller sum.
    """
    session = session_arg(args)
    if party.has(f"{session}/closed"):
        raise PartyError(f"session {session!r} is closed: its sum was revealed")
    count = sum(1 for _ in party.keys(f"{session}/from/"))
    if count < 2:
        raise PartyError(f"refusing to reveal a sum of {count} share(s): it would be an update")
    total = party.secret(f"{session}/sum")
    party.forget(f"{session}/")
    party.keep(f"{session}/closed", True)
    return {"sum_share": total, "count": count}


STEPS: dict[str, PartyStep] = {
    "secagg.share": _share,
    "secagg.accept": _accept,
    "secagg.reveal": _reveal,
}
