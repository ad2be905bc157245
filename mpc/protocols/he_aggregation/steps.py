"""Party steps of homomorphic aggregation (the driver is ``coordinator``).

One designated client, the *key holder*, makes a CKKS key pair (``mpc.he``)
and keeps the secret key: it never leaves that worker. Every client and the
coordinator get the public context (parameters and public key). The key holder
also draws a per-session master canary key and seals, for each other client
over the authenticated worker channel (``mpc.channel``, relayed by the
coordinator, who cannot read it), that client's own canary key and the key id
of the public context, so a client notices a public key swapped in transit.
Every client encrypts its sample-weighted update with the public key and its
keyed canaries; the coordinator adds the ciphertexts; the key holder decrypts
the sum once and returns it only after noise flooding (``mpc.he.flood``:
Gaussian noise from its ChaCha20 CSPRNG; KL ≤ 2^-30 from a release simulated
from the exact sum, per decryption), so the coordinator never sees a decryption error from which the
secret key could be solved (Li & Micciancio, Eurocrypt 2021).

The sample count n_c travels in the clear next to the ciphertexts: the
coordinator already knows it from the client's training reply, so encrypting
it would hide nothing (and the plain total lets it check the opened sum).

What the key holder defends against: it decrypts once per session, and only a
sum of at least the minimum cohort (the coordinator's ``min_cohort``, raised
to this worker's own floor) whose keyed canaries equal those of exactly the
clients it keyed (>= 2), each once — so not one client's ciphertext, a partial
sum, a sum under another key, a ciphertext the coordinator encrypted itself
with the public key, or a client's ciphertext added to itself. A client knows
only its own canary key and holds no secret key: colluding with the
coordinator, it can neither decrypt another client's ciphertext nor forge
another client's canaries. What it cannot defend against: CKKS malleability
beyond integer combinations (see ``mpc.he``); a client that crafts a
ciphertext with an error far beyond the bound the flooding covers in its data
slots only (the canary check catches excess error in the canary slots); and a
key holder that colludes with the coordinator — it could decrypt any client's
ciphertext. TenSEAL has no threshold decryption to remove that single key.
Secure aggregation (``mpc.protocols.secure_aggregation``), where no single party holds
a key, covers all three.

Vault keys, all under ``<session>/``: ``key`` (the X25519 pair, from the
generic ``keygen`` step), ``he/context`` (the CKKS context: with the secret key
on the key holder, the public context elsewhere), ``he/key-id``,
``he/canary-key`` (this client's canary key), ``he/clients`` and
``he/canary-master`` (on the key holder: the ids of all keyed clients and the
master canary key), ``he/encrypted`` (this client has encrypted), ``he/closed``
(the sum was decrypted; nothing more in this session).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mpc.errors import MPCError
from mpc.flatten import MAX_VECTOR, flatten_update
from mpc.he import (
    CANARY_KEY_BYTES,
    PARAMS,
    canaries,
    chunk_count,
    client_canary_key,
    decrypt_sum,
    encrypt_vector,
    flood,
    key_id,
    load_context,
    new_context,
    public_context_bytes,
)
from mpc.protocols.release import apply_release
from mpc.protocols.secure_aggregation.steps import HEADER_BYTES, header
from mpc.protocols.sessions import open_from, party_rng, peer_public, seal_for, session_key
from workers.codec import Value
from workers.contributions import WEIGHTINGS, Spending
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
    "ACCEPT_KEY",
    "DECRYPT",
    "ENCRYPT",
    "KEYGEN",
    "MAX_CLIENTS",
]

# The party steps, by the name the coordinator's driver sends.
KEYGEN = "he.keygen"
ACCEPT_KEY = "he.accept_key"
ENCRYPT = "he.encrypt"
DECRYPT = "he.decrypt"

_LABEL = "he/canary-key"
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
    """Make the session's CKKS key pair and canary keys; seal each client's canary key.

    args: session, clients (the other clients' ids), public_keys (their session
    X25519 keys, same order), weighting and state_id (this worker's own sealed
    state, whose training digest every client must match). Returns the public
    context (parameters and public key), the key id and, per other client, its
    canary key, the key id, the weighting rule and that digest, sealed for it
    (so a coordinator that swaps the public key is caught).
    The secret key never leaves this worker.
    """
    session = _open_session(party, args)
    # Every client must weigh and have trained as the key holder did: it fixes the
    # rule and its own training digest, and seals both with each canary key.
    vouched = _vouched_header(party, args)
    if party.has(f"{session}/he/context"):
        raise PartyError(f"session {session!r} already has a CKKS key on {party.worker_id!r}")
    others = [arg_id({"id": c}, "id") for c in arg_list(args, "clients", max_length=MAX_CLIENTS)]
    keys = arg_list(args, "public_keys", max_length=MAX_CLIENTS)
    if not others or len(keys) != len(others) or len(set(others)) != len(others):
        raise PartyError("need >= 1 other distinct client and one public key each")
    if party.worker_id in others:
        raise PartyError("the key holder cannot be one of the other clients")
    party.require_room(5)
    context = new_context()
    public = public_context_bytes(context)
    kid = key_id(public)
    master = party_rng(party).random_bytes(CANARY_KEY_BYTES)
    sealed = [
        tensor_from_bytes(
            seal_for(
                party,
                session,
                client,
                key,
                client_canary_key(master, client) + bytes.fromhex(kid) + vouched,
                label=_LABEL,
            )
        )
        for client, key in zip(others, keys, strict=True)
    ]
    party.keep(f"{session}/he/context", context)
    party.keep(f"{session}/he/key-id", kid)
    party.keep(f"{session}/he/clients", sorted([party.worker_id, *others]))
    party.keep(f"{session}/he/canary-master", master)
    party.keep(f"{session}/he/canary-key", client_canary_key(master, party.worker_id))
    party.keep(f"{session}/he/header", vouched)
    # The key holder alone can release the clients' states from this session.
    party.keep(f"{session}/he/holder", (party.worker_id, session_key(party, session).public_bytes))
    return {"public_context": tensor_from_bytes(public), "key_id": kid, "sealed": sealed}


def _vouched_header(party: Party, args: Mapping[str, Value]) -> bytes:
    """The key holder's weighting rule and the training digest of its own state
    (args ``weighting``, ``state_id``): what every client must match."""
    weighting = arg_str(args, "weighting")
    if weighting not in WEIGHTINGS:
        raise PartyError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    return header(weighting, party.contribution(arg_str(args, "state_id")).digest)


def _accept_key(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Open the key holder's sealed canary key; check the public context is the one it names.

    args: session, sender (the key holder), sender_public_key, sealed,
    public_context (relayed by the coordinator), key_id (the coordinator's).
    """
    session = _open_session(party, args)
    if party.has(f"{session}/he/context"):
        raise PartyError(f"session {session!r} already has a CKKS key on {party.worker_id!r}")
    sender = arg_id(args, "sender")
    claimed = arg_str(args, "key_id", max_length=64)
    public = arg_bytes(args, "public_context")
    opened = open_from(
        party,
        session,
        sender,
        args.get("sender_public_key"),
        arg_bytes(args, "sealed"),
        label=_LABEL,
    )
    if len(opened) != CANARY_KEY_BYTES + 32 + HEADER_BYTES:
        raise PartyError(f"the sealed canary key from {sender!r} has {len(opened)} bytes")
    canary_key = opened[:CANARY_KEY_BYTES]
    sealed_id = opened[CANARY_KEY_BYTES : CANARY_KEY_BYTES + 32].hex()
    vouched = opened[CANARY_KEY_BYTES + 32 :]
    mine = key_id(public)
    if not mine == sealed_id == claimed:
        raise PartyError(
            f"the public context has key id {mine[:16]}…, {sender!r} sealed {sealed_id[:16]}…, "
            f"the coordinator names {claimed[:16]}…: keys do not match"
        )
    try:
        context = load_context(public, secret=False)
    except MPCError as exc:
        raise PartyError(f"public context from {sender!r}: {exc}") from None
    party.require_room(5)
    party.keep(f"{session}/he/context", context)
    party.keep(f"{session}/he/key-id", mine)
    party.keep(f"{session}/he/canary-key", canary_key)
    party.keep(f"{session}/he/header", vouched)
    holder_public = peer_public(party, session, sender, args.get("sender_public_key"))
    party.keep(f"{session}/he/holder", (sender, holder_public))
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
    state_id = arg_str(args, "state_id")
    apply_release(party, args, state_id)
    if header(weighting, party.contribution(state_id).digest) != party.secret(
        f"{session}/he/header"
    ):
        raise PartyError(
            f"{party.worker_id!r} would be weighted or has trained differently from the key "
            f"holder of session {session!r}: refused"
        )
    holder, holder_public = party.secret(f"{session}/he/holder")
    spending = Spending(session, {holder: holder_public}, session_key(party, session))
    state, contribution = party.take_contribution(state_id, spending)
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
    marks = canaries(party.secret(f"{session}/he/canary-key"), chunk_count(values.numel()))
    chunks = encrypt_vector(context, values, marks)
    return {
        "ciphertexts": [tensor_from_bytes(c) for c in chunks],
        "key_id": party.secret(f"{session}/he/key-id"),
        "length": int(values.numel()),
        "weight": weight,
    }


def _decrypt(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Decrypt the summed ciphertexts and release them flooded (the key holder, once a session).

    args: session, ciphertexts, length, count (clients in the sum), key_id,
    min_cohort (optional, default 2; raised to this worker's own floor).
    ``count`` must reach the minimum cohort and equal the clients this holder
    keyed (>= 2), and every chunk's canaries must decrypt to the sum of those
    clients' keyed canaries, so neither a single client's ciphertext, a
    partial sum, nor a repeated client is opened. Returns the sum with
    Gaussian noise of std ``sigma`` added (``mpc.he.flood``), never the exact
    decryption.
    """
    session = _open_session(party, args)
    if not party.has(f"{session}/he/clients"):
        raise PartyError(f"{party.worker_id!r} is not the key holder of session {session!r}")
    context = _session_context(party, session, args)
    holders = [str(c) for c in party.secret(f"{session}/he/clients")]
    count = arg_int(args, "count", low=2, high=MAX_CLIENTS)
    least = party.min_cohort
    if "min_cohort" in args:
        least = max(least, arg_int(args, "min_cohort", low=2, high=MAX_CLIENTS))
    if count < least:
        raise PartyError(
            f"refusing to decrypt a sum of {count} clients: the minimum cohort is {least}"
        )
    if count != len(holders):
        raise PartyError(
            f"refusing to decrypt a sum of {count} clients: {len(holders)} hold the key"
        )
    length = arg_int(args, "length", low=1, high=MAX_VECTOR)
    chunks = _chunks_arg(args, "ciphertexts", length)
    master = party.secret(f"{session}/he/canary-master")
    party.forget(f"{session}/he/")  # one decryption per session, even if this one fails
    party.keep(f"{session}/he/closed", True)
    party.end_session(session, "revealed")
    expected = sum(canaries(client_canary_key(master, c), len(chunks)) for c in holders)
    assert isinstance(expected, torch.Tensor)
    try:
        exact = decrypt_sum(context, chunks, length=length, expected=expected, count=count)
    except MPCError as exc:
        raise PartyError(str(exc)) from None
    total, sigma = flood(exact, count, party_rng(party))
    return {"sum": total, "count": count, "sigma": sigma}


register_party_steps(
    {
        KEYGEN: _keygen,
        ACCEPT_KEY: _accept_key,
        ENCRYPT: _encrypt,
        DECRYPT: _decrypt,
    }
)
