"""Homomorphic aggregation: clients encrypt, the coordinator adds ciphertexts it cannot read.

Protocol (roles: ``clients`` hold trained states; ``key_holder`` is one of
them), CKKS over TenSEAL (``mpc.he`` gives parameters, error bound and noise
flooding):

1. ``keys``      — every client makes a session X25519 key pair (``mpc.channel``);
2. ``context``   — the key holder makes a CKKS key pair and keeps the secret
   key; it returns the public context (parameters and public key), its key id
   and, for each other client, that client's canary key and the key id sealed
   for it; the coordinator relays them (``he.accept_key``: each client checks
   the public context against the sealed key id);
3. ``encrypt``   — client c encrypts n_c·w_c chunk-wise with the public key,
   each chunk ending in c's keyed canaries; n_c comes back in the clear (the
   coordinator knows it from training);
4. ``aggregate`` — the coordinator loads the ciphertexts with the public
   context and adds them;
5. ``decrypt``   — the key holder decrypts the sum once, after checking that
   it holds at least ``min_cohort`` clients and that every chunk's canaries
   are those of all the clients, once each; it returns the sum plus Gaussian
   flooding noise of std σ (``run.state["flood_sigma"]``); the coordinator
   divides by Σ n_c.

What each party sees, when the coordinator follows the protocol: the
coordinator, the public context and ciphertexts (IND-CPA under RLWE), then the
flooded sum — never an exact decryption, whose CKKS error would give away the
secret key (Li & Micciancio, Eurocrypt 2021); the flood keeps the released
vector within KL 2^-30 of one simulated from the exact sum alone; a client
other than the key holder, its own update, the public key and its own canary
key (it can encrypt, not decrypt); the key holder, the sum. The flood costs
precision: σ/Σ n_c per averaged weight (``mpc.he`` gives σ). Unlike secure
aggregation, one party (the key holder) could decrypt any client's
ciphertext if the coordinator gave it one: HE moves the trust from a committee
to the key holder's refusal, which rests on the keyed canaries
(``mpc.protocols.he_aggregation.steps`` says how much the key holder checks); a key holder that
colludes with the coordinator reads every update. A key holder that drops out
loses the round.

Results are checked, not trusted: ciphertexts under another key id, of the
wrong length or chunk count, or that do not load under the public context give
an :class:`MPCError` before decryption; a ciphertext whose label lies about its
key decrypts to canaries far from the expected ones and the key holder refuses
it, so a round never returns garbage.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch

from mpc.errors import MPCError
from mpc.flatten import float_keys, unflatten_average, vector_length
from mpc.he import add_ciphertexts, chunk_count, key_id, load_context
from mpc.protocols.base import Protocol, ProtocolRun, Step
from mpc.protocols.he_aggregation import steps as party
from mpc.protocols.release import Release, abandon_session, release_args
from mpc.protocols.secure_aggregation.coordinator import (
    SecureAggregate,
    SecureInput,
    check_cohort,
)
from mpc.protocols.sessions import exchange_keys
from workers.base import Worker

__all__ = ["HE_AGGREGATION", "he_average"]


def _bytes(value: object, what: str) -> bytes:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.ndim != 1:
        raise MPCError(f"{what} is not a byte string")
    return value.numpy().tobytes()


def _context(run: ProtocolRun) -> None:
    holder = run.one("key_holder")
    others = [c for c in run.workers("clients") if c.id != holder.id]
    reply = holder.party_op(
        party.KEYGEN,
        session=run.session,
        clients=[c.id for c in others],
        public_keys=[run.public_key(c) for c in others],
        weighting=run.state["weighting"],
        state_id=run.state["inputs"][holder.id].state_id,
    )
    public = _bytes(reply["public_context"], f"public context from {holder.id!r}")
    kid = reply["key_id"]
    if kid != key_id(public):
        raise MPCError(f"{holder.id!r} sent a key id that does not name its public context")
    run.state["context"] = load_context(public, secret=False)  # public key only
    run.state["key_id"] = kid
    run.state["public_context_bytes"] = len(public)
    sealed = reply["sealed"]
    if not isinstance(sealed, list) or len(sealed) != len(others):
        raise MPCError(
            f"{holder.id!r} did not seal one canary key for each of {len(others)} clients"
        )

    def deliver(index: int) -> None:
        client = others[index]
        answer = client.party_op(
            party.ACCEPT_KEY,
            session=run.session,
            sender=holder.id,
            sender_public_key=run.public_key(holder),
            sealed=sealed[index],
            public_context=reply["public_context"],
            key_id=run.state["key_id"],
        )
        if answer["key_id"] != run.state["key_id"]:
            raise MPCError(f"{client.id!r} accepted a different CKKS public context")

    run.each(list(range(len(others))), deliver)


def _encrypt(run: ProtocolRun) -> None:
    inputs: dict[str, SecureInput] = run.state["inputs"]
    length = run.state["length"]
    clients = run.workers("clients")

    def encrypt(client: Worker) -> list[bytes]:
        item = inputs[client.id]
        reply = client.party_op(
            party.ENCRYPT,
            session=run.session,
            state_id=item.state_id,
            weighting=run.state["weighting"],
            keys=run.state["keys"],
            **release_args(run, client),
            clients=len(clients),
            key_id=run.state["key_id"],
        )
        run.state["shared"].add(client.id)
        if reply["key_id"] != run.state["key_id"]:
            raise MPCError(
                f"{client.id!r} encrypted under key {str(reply['key_id'])[:16]}…, "
                f"the session's is {run.state['key_id'][:16]}…"
            )
        if reply["length"] != length:
            raise MPCError(
                f"{client.id!r} encrypted {reply['length']} values, the model has {length}"
            )
        if reply["weight"] != item.weight:
            raise MPCError(f"{client.id!r} reports weight {reply['weight']}, trained {item.weight}")
        chunks = reply["ciphertexts"]
        if not isinstance(chunks, list) or len(chunks) != chunk_count(length):
            raise MPCError(f"{client.id!r} sent no list of {chunk_count(length)} ciphertexts")
        return [_bytes(c, f"ciphertext from {client.id!r}") for c in chunks]

    ciphertexts = run.each(list(clients), encrypt)
    run.state["ciphertexts"] = ciphertexts
    run.state["ciphertext_bytes"] = {
        c.id: sum(map(len, chunks)) for c, chunks in zip(clients, ciphertexts, strict=True)
    }


def _aggregate(run: ProtocolRun) -> None:
    names = [repr(c.id) for c in run.workers("clients")]
    run.state["sum"] = add_ciphertexts(run.state["context"], run.state.pop("ciphertexts"), names)


def _decrypt(run: ProtocolRun) -> None:
    holder = run.one("key_holder")
    count = len(run.workers("clients"))
    reply = holder.party_op(
        party.DECRYPT,
        session=run.session,
        ciphertexts=[torch.frombuffer(bytearray(c), dtype=torch.uint8) for c in run.state["sum"]],
        length=run.state["length"],
        count=count,
        key_id=run.state["key_id"],
        min_cohort=run.state.get("min_cohort", 2),
    )
    total, sigma = reply["sum"], reply["sigma"]
    if not isinstance(total, torch.Tensor) or total.dtype != torch.float64:
        raise MPCError(f"{holder.id!r} returned no float64 sum")
    if reply["count"] != count or total.numel() != run.state["length"]:
        raise MPCError(
            f"{holder.id!r} decrypted {total.numel()} values of {reply['count']} clients"
        )
    if not isinstance(sigma, float) or not sigma > 0:
        raise MPCError(f"{holder.id!r} did not flood the sum it decrypted (sigma {sigma!r})")
    run.state["total"] = total
    run.state["flood_sigma"] = sigma


HE_AGGREGATION = Protocol(
    "he-aggregation",
    roles=("clients", "key_holder"),
    steps=(
        Step("keys", "clients", exchange_keys),
        Step("context", "key_holder", _context),
        Step("encrypt", "clients", _encrypt),
        Step("aggregate", "clients", _aggregate),
        Step("decrypt", "key_holder", _decrypt, opens=True),
    ),
    abandon=functools.partial(abandon_session, role="key_holder"),
)


def he_average(
    inputs: Sequence[SecureInput],
    key_holder: Worker,
    template: Mapping[str, torch.Tensor],
    *,
    parallel: bool = False,
    weighting: str = "samples",
    min_cohort: int = 2,
    releases: dict[str, Release] | None = None,
) -> SecureAggregate:
    """Σ_c n_c·w_c / Σ_c n_c over the clients' states, the coordinator adding ciphertexts.

    ``key_holder`` must be one of the clients' workers; it refuses to decrypt
    a sum of fewer than ``min_cohort`` clients (or its own floor). The
    averaged weights carry the key holder's flooding noise: std
    ``flood_sigma / Σ n_c``. The result's ``seconds`` has
    keys/context/encrypt/aggregate/decrypt; ``run.state`` keeps
    ``ciphertext_bytes`` (per client id), ``public_context_bytes`` and
    ``flood_sigma``.
    """
    if len(inputs) < 2:
        raise MPCError(
            f"HE aggregation needs >= 2 clients (one client's sum is its update), got {len(inputs)}"
        )
    check_cohort(len(inputs), min_cohort)
    clients = [item.worker for item in inputs]
    if key_holder.id not in {c.id for c in clients}:
        raise MPCError(f"the key holder {key_holder.id!r} is not one of the clients")
    holder = next(c for c in clients if c.id == key_holder.id)
    run = HE_AGGREGATION.bind({"clients": clients, "key_holder": [holder]}, parallel=parallel)
    run.state.update(
        inputs={item.worker.id: item for item in inputs},
        length=vector_length(template) - 1,  # floats only: the weights travel in the clear
        keys=float_keys(template),
        weighting=weighting,
        min_cohort=min_cohort,
        releases=releases if releases is not None else {},
        shared=set(),
    )
    run.run()
    expected = float(sum(item.weight for item in inputs))
    total = torch.cat([run.state.pop("total"), torch.tensor([expected], dtype=torch.float64)])
    del run.state["context"], run.state["sum"]
    state, weight = unflatten_average(total, template, expected)
    return SecureAggregate(state, weight, dict(run.seconds), run)
