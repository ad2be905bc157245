"""Shared-secret challenge–response between a coordinator and a worker.

Both sides hold the same secret (a token file); neither ever sends it. On a new
connection the worker sends a fresh 32-byte nonce; the coordinator answers with
its own nonce and HMAC-SHA256(secret, transcript) over a client label, the
worker id and both nonces; the worker checks it in constant time and answers
with its own HMAC under a different label, so the coordinator also knows it
reached a holder of the secret (mutual authentication). Fresh nonces on both
sides make a recorded exchange useless for a later connection.

Sans-I/O: these are pure functions over bytes; the websocket server and client
move the messages (``AuthChallenge``, ``AuthResponse``, ``AuthResult``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from workers.errors import WorkerError

__all__ = [
    "MIN_SECRET_BYTES",
    "NONCE_BYTES",
    "client_proof",
    "new_nonce",
    "read_secret",
    "verify",
    "worker_proof",
    "write_secret",
]

NONCE_BYTES = 32
MIN_SECRET_BYTES = 16
_CLIENT_LABEL = b"fedsim-auth-v1 coordinator"
_WORKER_LABEL = b"fedsim-auth-v1 worker"


def new_nonce() -> bytes:
    """A fresh random nonce from the OS CSPRNG."""
    return secrets.token_bytes(NONCE_BYTES)


def _proof(label: bytes, secret: bytes, worker_id: str, nonce: bytes, client_nonce: bytes) -> bytes:
    if len(nonce) != NONCE_BYTES or len(client_nonce) != NONCE_BYTES:
        raise WorkerError(f"auth nonces must be {NONCE_BYTES} bytes")
    ident = worker_id.encode()
    # Length-prefix the variable-length field so that transcripts cannot collide.
    transcript = b"|".join([label, len(ident).to_bytes(4, "big"), ident, nonce, client_nonce])
    return hmac.new(secret, transcript, hashlib.sha256).digest()


def client_proof(secret: bytes, worker_id: str, nonce: bytes, client_nonce: bytes) -> bytes:
    """What the coordinator sends to prove it holds ``secret``."""
    return _proof(_CLIENT_LABEL, secret, worker_id, nonce, client_nonce)


def worker_proof(secret: bytes, worker_id: str, nonce: bytes, client_nonce: bytes) -> bytes:
    """What the worker sends back to prove it holds ``secret`` too."""
    return _proof(_WORKER_LABEL, secret, worker_id, nonce, client_nonce)


def verify(expected: bytes, received: bytes) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(expected, received)


def read_secret(path: str | Path) -> bytes:
    """The secret in a token file (surrounding whitespace ignored); WorkerError if unusable."""
    file = Path(path).expanduser()
    try:
        secret = file.read_bytes().strip()
    except OSError as exc:
        raise WorkerError(f"cannot read token file {str(file)!r}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise WorkerError(
            f"token file {str(file)!r} holds {len(secret)} bytes; at least "
            f"{MIN_SECRET_BYTES} are needed (e.g. `openssl rand -hex 32 > {file.name}`)"
        )
    return secret


def write_secret(path: str | Path) -> bytes:
    """Create a token file with a fresh random secret, readable by its owner only."""
    secret = secrets.token_hex(32).encode()
    file = Path(path)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret + b"\n")
    return secret
