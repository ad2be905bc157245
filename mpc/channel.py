"""Pairwise authenticated encryption between parties, relayed by an untrusted coordinator.

In fedsim every message between workers passes through the coordinator. A
share relayed in the clear would be a share the coordinator sees, and with all
of them it sees everything; so each pair of parties derives a key of its own,
as in Bonawitz et al., *Practical Secure Aggregation for Privacy-Preserving
Machine Learning*, CCS 2017, §4:

- each party makes a fresh X25519 key pair per protocol session and publishes
  the public key (through the coordinator);
- sender and recipient both compute the X25519 shared secret and derive a
  ChaCha20-Poly1305 key with HKDF-SHA256, bound to the session, both ends and
  both public keys (length-prefixed, so no two field lists collide);
- every sealed message has a fresh random 96-bit nonce and carries associated
  data naming the session, both ends, the step and the message's purpose, so a
  ciphertext cannot be moved to another session, recipient or step. Replays
  within one step are the steps' business: each counts a sender once.

Public keys reach the parties through the coordinator. On their own they
protect against a coordinator that relays faithfully but reads everything
(Bonawitz et al.'s semi-honest server); one that substitutes its own key for a
party's could read what is sealed for that party. Workers that share a peer
secret the coordinator does not hold tag their session keys with it and
refuse untagged ones (``mpc.protocols.sessions.peer_public``); without one they trust
the coordinator to relay keys faithfully.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mpc.errors import MPCError

__all__ = [
    "ONCE_KEY_BYTES",
    "PUBLIC_KEY_BYTES",
    "SessionKey",
    "once_key_digest",
    "open_once",
    "open_sealed",
    "seal",
    "seal_once",
]

PUBLIC_KEY_BYTES = 32
_INFO = b"fedsim pairwise channel v2"
# A fresh random nonce per message, sent in front of the ciphertext, so a
# (key, nonce) pair is never reused even when a step runs twice; with far fewer
# than 2^32 messages per key the chance of a collision stays below 2^-32.
_NONCE_BYTES = 12
ONCE_KEY_BYTES = 32
_ONCE_NONCE = bytes(_NONCE_BYTES)  # each one-time key encrypts one message: a fixed nonce is safe
_BROADCAST = "*"  # the recipient named in a one-time box's associated data
_ONCE_DIGEST_TAG = b"fedsim/once-key\x00"


def _encode(*fields: bytes) -> bytes:
    """Fields with 4-byte length prefixes (ids may contain any character)."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


@dataclass(frozen=True)
class SessionKey:
    """A party's X25519 key pair for one protocol session."""

    private: X25519PrivateKey

    @classmethod
    def generate(cls) -> SessionKey:
        return cls(X25519PrivateKey.generate())

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def _aead(
        self, peer_public: bytes, session: str, sender: str, recipient: str, *, sending: bool
    ) -> ChaCha20Poly1305:
        if len(peer_public) != PUBLIC_KEY_BYTES:
            raise MPCError(
                f"an X25519 public key has {PUBLIC_KEY_BYTES} bytes, got {len(peer_public)}"
            )
        try:
            shared = self.private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # e.g. a low-order point: the exchange gives all zeros
            raise MPCError(f"bad X25519 public key: {exc}") from None
        ends = (self.public_bytes, peer_public) if sending else (peer_public, self.public_bytes)
        info = _INFO + _encode(session.encode(), sender.encode(), recipient.encode(), *ends)
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
        return ChaCha20Poly1305(key)


def _associated(session: str, sender: str, recipient: str, label: str, purpose: int) -> bytes:
    if not 0 <= purpose < 2**32:
        raise MPCError(f"message purpose must be in [0, 2**32), got {purpose}")
    fields = (session, sender, recipient, label)
    return _encode(b"fedsim", *(f.encode() for f in fields), purpose.to_bytes(4, "big"))


def seal(
    key: SessionKey,
    peer_public: bytes,
    plaintext: bytes,
    *,
    session: str,
    sender: str,
    recipient: str,
    label: str,
    purpose: int = 0,
) -> bytes:
    """Encrypt and authenticate ``plaintext`` from ``sender`` (holding ``key``) for ``recipient``.

    ``label`` names the protocol step and ``purpose`` numbers the message within
    it; both are authenticated, so the recipient must pass the same values to
    :func:`open_sealed`. Returns nonce ‖ ciphertext ‖ tag.
    """
    aead = key._aead(peer_public, session, sender, recipient, sending=True)
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + aead.encrypt(
        nonce, plaintext, _associated(session, sender, recipient, label, purpose)
    )


def open_sealed(
    key: SessionKey,
    peer_public: bytes,
    ciphertext: bytes,
    *,
    session: str,
    sender: str,
    recipient: str,
    label: str,
    purpose: int = 0,
) -> bytes:
    """Decrypt a :func:`seal`-ed message; MPCError if it was altered or is not for us."""
    aead = key._aead(peer_public, session, sender, recipient, sending=False)
    nonce, body = ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:]
    try:
        return aead.decrypt(nonce, body, _associated(session, sender, recipient, label, purpose))
    except (InvalidTag, ValueError):  # ValueError: a nonce shorter than 12 bytes
        raise MPCError(
            f"ciphertext from {sender!r} to {recipient!r} ({label}) failed authentication: "
            "altered, replayed or not sealed for this recipient"
        ) from None


def seal_once(plaintext: bytes, *, session: str, sender: str, label: str) -> tuple[bytes, bytes]:
    """``plaintext`` encrypted once for several recipients: (one-time key, box).

    For a large message that several parties must receive identically: the
    sender seals only the 32-byte key for each recipient (:func:`seal`) and
    the coordinator relays one box to all, instead of one encryption of the
    whole message per recipient. Recipients that report the same
    :func:`once_key_digest` and got the same box hold the same plaintext.
    """
    key = ChaCha20Poly1305.generate_key()
    associated = _associated(session, sender, _BROADCAST, label, 0)
    return key, ChaCha20Poly1305(key).encrypt(_ONCE_NONCE, plaintext, associated)


def open_once(key: bytes, box: bytes, *, session: str, sender: str, label: str) -> bytes:
    """Decrypt a :func:`seal_once` box; MPCError if the key or the box is not the sender's."""
    if len(key) != ONCE_KEY_BYTES:
        raise MPCError(f"a one-time key has {ONCE_KEY_BYTES} bytes, got {len(key)}")
    associated = _associated(session, sender, _BROADCAST, label, 0)
    try:
        return ChaCha20Poly1305(key).decrypt(_ONCE_NONCE, box, associated)
    except InvalidTag:
        raise MPCError(
            f"the {label} box from {sender!r} failed authentication under the key it sealed: "
            "altered, or another sender's"
        ) from None


def once_key_digest(key: bytes) -> str:
    """A public name of a one-time key (SHA-256, hex): equal names, equal keys."""
    return hashlib.sha256(_ONCE_DIGEST_TAG + key).hexdigest()
