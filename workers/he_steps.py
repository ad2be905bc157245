"""Party steps of homomorphic aggregation (the worker side of ``mpc.he_aggregation``).

One designated client, the *key holder*, makes a CKKS key (``mpc.he``) and
sends the secret context to each other client sealed over the authenticated
worker channel (``mpc.channel``, relayed by the coordinator, who cannot read
it); the coordinator gets only the parameters, no key. Every client encrypts
its sample-weighted update with the secret key and its keyed canaries; the
coordinator adds the ciphertexts; the key holder decrypts the sum once.

The sample count n_c travels in the clear next to the ciphertexts: the
coordinator already knows it from the client's training reply, so encrypting
it would hide nothing (and the plain total lets it check the opened sum).

What the key holder defends against: it decrypts once per session, and only a
sum whose keyed canaries equal those of exactly the clients it gave the key to
(>= 2), each once — so not one client's ciphertext, a partial sum, a sum under
another key, or a client's ciphertext added to itself. The coordinator holds
no key, so it cannot encrypt anything of its own. What it cannot defend
against: CKKS malleability beyond integer combinations (see ``mpc.he``), and a
key holder that colludes with the coordinator — it could decrypt any client's
ciphertext. Secure aggregation (``mpc.secure_aggregation``), where no single
party holds a key, covers both.

Vault keys, all under ``<session>/``: ``key`` (the X25519 pair, from the
generic ``keygen`` step), ``he/context`` (the CKKS context with its secret key),
``he/key-id``, ``he/clients`` (on the key holder: the ids of all clients that
hold the key), ``he/encrypted`` (this client has encrypted), ``he/closed`` (the
sum was decrypted; nothing more in this session).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mpc.errors import MPCError
from mpc.flatten import MAX_VECTOR, flatten_update
from mpc.he import (
    PARAMS,
    canaries,
    chunk_count,
    decrypt_sum,
    encrypt_vector,
    key_id,
    load_context,
    new_context,
    public_context_bytes,
    secret_context_bytes,
)
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
    check_tensor,
    open_from,
    seal_for,
    session_arg,
    session_key,
    tensor_from_bytes,
)

__all__ = ["MAX_CLIENTS", "STEPS"]

_LABEL = "he/secret-context"
MAX_CLIENTS = 1024


def _open_session(party: Party, args: Mapping[str, Value]) -> str:
    session = session_arg(args)
    if party.has(f"{session}/he/closed"):
        raise PartyError(f"session {session!r} is closed: its sum was decrypted")
    session_key(party, session)  # fails before anything is written if keygen did not run
    return session


def _chunks_arg(args: Mapping[str, Value], name: str, length: int) -> list[bytes]:
    items = arg_list(args, name, max_length=chunk_count(MAX_VECTOR))
    if len(items) != chunk_count(length):
        raise PartyError(f"{len(items)} ciphertexts cannot hold {length} values")
    return [
        check_tensor(item, f"{name}[{i}]", dtype=torch.uint8, ndim=1).numpy().tobytes()
        for i, item in enumerate(items)
    ]


def _keygen(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Make the session's CKKS key; seal the secret context for every other client.

    args: session, clients (the other clients' ids), public_keys (their session
    X25519 keys, same order). Returns the public context (parameters, no key),
    the key id and one sealed secret context per other client.
    """
    session = _open_session(party, args)
    if party.has(f"{session}/he/context"):
        raise PartyError(f"session {session!r} already has a CKKS key on {party.worker_id!r}")
    others = [arg_id({"id": c}, "id") for c in arg_list(args, "clients", max_length=MAX_CLIENTS)]
    keys = arg_list(args, "public_keys", max_length=MAX_CLIENTS)
    if not others or len(keys) != len(others) or len(set(others)) != len(others):
        raise PartyError("need >= 1 other distinct client and one public key each")
    if party.worker_id in others:
        raise PartyError("the key holder cannot be one of the other clients")
    party.require_room(3)
    context = new_context()
    secret = secret_context_bytes(context)
    sealed = [
        tensor_from_bytes(seal_for(party, session, client, key, secret, label=_LABEL))
        for client, key in zip(others, keys, strict=True)
    ]
    kid = key_id(context)
    party.keep(f"{session}/he/context", context)
    party.keep(f"{session}/he/key-id", kid)
    party.keep(f"{session}/he/clients", sorted([party.worker_id, *others]))
    return {
        "public_context": tensor_from_bytes(public_context_bytes(context)),
        "key_id": kid,
        "sealed": sealed,
    }


def _accept_key(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Open the key holder's sealed secret context; check it is the key the coordinator names.

    args: session, sender (the key holder), sender_public_key, sealed,
    public_context (as the coordinator holds it: same parameters), key_id.
    """
    session = _open_session(party, args)
    if party.has(f"{session}/he/context"):
        raise PartyError(f"session {session!r} already has a CKKS key on {party.worker_id!r}")
    sender = arg_id(args, "sender")
    claimed = arg_str(args, "key_id", max_length=64)
    public = arg_bytes(args, "public_context")
    secret = open_from(
        party,
        session,
        sender,
        args.get("sender_public_key"),
        arg_bytes(args, "sealed"),
        label=_LABEL,
    )
    try:
        context = load_context(secret, secret=True)
        load_context(public, secret=False)  # the coordinator's parameters are the same
    except MPCError as exc:
        raise PartyError(f"contexts from {sender!r} and the coordinator: {exc}") from None
    mine = key_id(context)
    if mine != claimed:
        raise PartyError(
            f"the secret context from {sender!r} has key id {mine[:16]}…, the coordinator "
            f"names {claimed[:16]}…: keys do not match"
        )
    party.require_room(2)
    party.keep(f"{session}/he/context", context)
    party.keep(f"{session}/he/key-id", mine)
    return {"key_id": mine}


def _session_context(party: Party, session: str, args: Mapping[str, Value]) -> object:
    claimed = arg_str(args, "key_id", max_length=64)
    context = party.secret(f"{session}/he/context")
    mine = party.secret(f"{session}/he/key-id")
    if claimed != mine:
        raise PartyError(f"key id {claimed[:16]}… is not this session's key ({mine[:16]}…)")
    return context


def _encrypt(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Encrypt n·w (this worker's sealed trained state, weighted) under the session key.

    args: session, state_id, weighting ("samples" or "uniform": the weight n
    is the worker's own, returned in the clear — the coordinator knows it
    from training), keys (the global model's floating tensors
    in order), clients (how many the sum will hold: bounds the value range),
    key_id (the key the coordinator expects). Once per session, and the state
    is consumed: two ciphertexts of one update would let a coordinator
    subtract sums.
    """
    session = _open_session(party, args)
    if party.has(f"{session}/he/encrypted"):
        raise PartyError(f"{party.worker_id!r} already encrypted its update in session {session!r}")
    context = _session_context(party, session, args)
    weighting = arg_str(args, "weighting")
    if weighting not in WEIGHTINGS:
        raise PartyError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    clients = arg_int(args, "clients", low=2, high=MAX_CLIENTS)
    layout = [str(k) for k in arg_list(args, "keys", max_length=10_000)]
    state, contribution = party.take_contribution(arg_str(args, "state_id"), session)
    weight = contribution.weight(weighting)
    values = flatten_update(state, weight, layout)[:-1]  # the weight goes in the clear
    # Headroom: the sum of `clients` vectors must stay inside the decryptable range.
    limit = PARAMS.max_abs_sum / (2 * clients)
    if values.numel() and float(values.abs().max()) > limit:
        raise PartyError(
            f"weighted update reaches {float(values.abs().max()):g}, beyond ±{limit:g}, the "
            f"range that keeps a CKKS sum of {clients} clients decryptable"
        )
    party.keep(f"{session}/he/encrypted", True)
    marks = canaries(context, party.worker_id, chunk_count(values.numel()))
    chunks = encrypt_vector(context, values, marks)
    return {
        "ciphertexts": [tensor_from_bytes(c) for c in chunks],
        "key_id": party.secret(f"{session}/he/key-id"),
        "length": int(values.numel()),
        "weight": weight,
    }


def _decrypt(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Decrypt the summed ciphertexts (the key holder only, once per session).

    args: session, ciphertexts, length, count (clients in the sum), key_id.
    ``count`` must equal the clients this holder gave the key to (>= 2) and
    every chunk's canaries must decrypt to the sum of those clients' keyed
    canaries, so neither a single client's ciphertext, a partial sum, nor a
    repeated client is opened.
    """
    session = _open_session(party, args)
    if not party.has(f"{session}/he/clients"):
        raise PartyError(f"{party.worker_id!r} is not the key holder of session {session!r}")
    context = _session_context(party, session, args)
    holders = [str(c) for c in party.secret(f"{session}/he/clients")]
    count = arg_int(args, "count", low=2, high=MAX_CLIENTS)
    if count != len(holders):
        raise PartyError(
            f"refusing to decrypt a sum of {count} clients: {len(holders)} hold the key"
        )
    length = arg_int(args, "length", low=1, high=MAX_VECTOR)
    chunks = _chunks_arg(args, "ciphertexts", length)
    party.forget(f"{session}/he/")  # one decryption per session, even if this one fails
    party.keep(f"{session}/he/closed", True)
    expected = sum(canaries(context, c, len(chunks)) for c in holders)
    assert isinstance(expected, torch.Tensor)
    try:
        total = decrypt_sum(context, chunks, length=length, expected=expected)
    except MPCError as exc:
        raise PartyError(str(exc)) from None
    return {"sum": total, "count": count}


STEPS: dict[str, PartyStep] = {
    "he.keygen": _keygen,
    "he.accept_key": _accept_key,
    "he.encrypt": _encrypt,
    "he.decrypt": _decrypt,
}
