"""What every protocol's parties share: session keys, sealing for a peer, a CSPRNG.

A protocol run is a *session*: every party makes an X25519 key pair for it (the
``keygen`` step, driven by :func:`exchange_keys`) and seals
what another party must read with the pair's key (``mpc.channel``). The
coordinator relays the public keys; with a peer secret (shared by the
federation's workers, never by the coordinator) each key carries a tag that
the other parties check, so a relay cannot substitute its own key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import torch

from mpc.channel import PUBLIC_KEY_BYTES, SessionKey, open_sealed, seal
from mpc.errors import MPCError
from mpc.protocols.base import ProtocolRun
from mpc.random import SecureRandom
from workers.base import Worker
from workers.codec import Value
from workers.party import (
    Party,
    PartyError,
    check_tensor,
    register_party_steps,
    session_arg,
    tensor_from_bytes,
)

__all__ = [
    "KEYGEN",
    "exchange_keys",
    "open_from",
    "party_rng",
    "peer_public",
    "seal_for",
    "session_key",
]

KEYGEN = "keygen"


def party_rng(party: Party) -> SecureRandom:
    """The party's CSPRNG for shares, masks and noise, keyed from the OS on first use."""
    return party.lasting("csprng", SecureRandom)


def session_key(party: Party, session: str) -> SessionKey:
    """This party's X25519 key pair for ``session`` (made by the ``keygen`` step)."""
    key = party.secret(f"{session}/key")
    assert isinstance(key, SessionKey)
    return key


_TAG_LABEL = b"fedsim-session-key-v1"


def _key_tag(peer_secret: bytes, session: str, worker_id: str, public: bytes) -> bytes:
    """HMAC over a session public key and whose it is, under the workers' peer secret."""
    fields = [_TAG_LABEL, session.encode(), worker_id.encode(), public]
    message = b"".join(len(f).to_bytes(4, "big") + f for f in fields)
    return hmac.new(peer_secret, message, hashlib.sha256).digest()


def peer_public(party: Party, session: str, peer: str, value: Value) -> bytes:
    """``peer``'s session public key as relayed by the coordinator, checked if this
    party has a peer secret: the key must carry ``peer``'s tag for this session.

    Without a peer secret the key is taken as relayed: the coordinator is then
    trusted not to substitute keys (it could otherwise read what is sealed).
    """
    data = check_tensor(value, f"public key of {peer!r}", dtype=torch.uint8, ndim=1)
    raw = data.numpy().tobytes()
    public, tag = raw[:PUBLIC_KEY_BYTES], raw[PUBLIC_KEY_BYTES:]
    if party.peer_secret is not None and not hmac.compare_digest(
        tag, _key_tag(party.peer_secret, session, peer, public)
    ):
        raise PartyError(
            f"the public key given for {peer!r} is not vouched for by the workers' peer "
            "secret: refused (a substituted key would let the relay read the message)"
        )
    return public


def seal_for(
    party: Party,
    session: str,
    recipient: str,
    recipient_public: Value,
    payload: bytes,
    *,
    label: str,
    purpose: int = 0,
) -> bytes:
    """``payload`` sealed with this party's session key for ``recipient`` (``mpc.channel``)."""
    return seal(
        session_key(party, session),
        peer_public(party, session, recipient, recipient_public),
        payload,
        session=session,
        sender=party.worker_id,
        recipient=recipient,
        label=label,
        purpose=purpose,
    )


def open_from(
    party: Party,
    session: str,
    sender: str,
    sender_public: Value,
    ciphertext: bytes,
    *,
    label: str,
    purpose: int = 0,
) -> bytes:
    """A message ``sender`` sealed for this party; MPCError if altered or misdirected."""
    return open_sealed(
        session_key(party, session),
        peer_public(party, session, sender, sender_public),
        ciphertext,
        session=session,
        sender=sender,
        recipient=party.worker_id,
        label=label,
        purpose=purpose,
    )


def _keygen(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Make this party's X25519 key pair for the session and publish the public half,
    tagged under the peer secret if the worker has one."""
    session = session_arg(args)
    if party.has(f"{session}/key") or party.ended(session):
        raise PartyError(f"session {session!r} already has a key on {party.worker_id!r}")
    key = SessionKey.generate()
    party.keep(f"{session}/key", key)
    public = key.public_bytes
    if party.peer_secret is not None:
        public += _key_tag(party.peer_secret, session, party.worker_id, public)
    return {"public_key": tensor_from_bytes(public)}


register_party_steps({KEYGEN: _keygen})


# ------------------------------------------------------------------ coordinator


def exchange_keys(run: ProtocolRun) -> None:
    """A first step for protocols whose parties seal messages for each other: every
    bound worker makes a session key pair (``mpc.channel``) and publishes the public half."""

    def keygen(worker: Worker) -> bytes:
        public = worker.party_op(KEYGEN, session=run.session)["public_key"]
        if not isinstance(public, torch.Tensor) or public.dtype != torch.uint8:
            raise MPCError(f"{worker.id!r} returned no public key")
        return public.numpy().tobytes()

    workers = run.all_workers()
    run.state["public_keys"] = dict(
        zip([w.id for w in workers], run.each(workers, keygen), strict=True)
    )
