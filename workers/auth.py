"""Shared-secret challenge–response between a coordinator and a worker.

Both sides hold the same secret, the worker's key; neither ever sends it. The
coordinator holds one master secret per run (the workers file's token file)
and derives each worker's key from it and the worker's id (``worker_key``,
HKDF); a worker holds only its own key, so it cannot pose as the coordinator
to another worker. On a new
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
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from workers.errors import WorkerError
from workers.messages import PROTOCOL_VERSION

__all__ = [
    "MIN_SECRET_BYTES",
    "NONCE_BYTES",
    "certificate_binding",
    "client_proof",
    "new_nonce",
    "new_secret",
    "read_secret",
    "verify",
    "worker_key",
    "worker_proof",
    "write_secret",
    "write_worker_key",
]

NONCE_BYTES = 32
MIN_SECRET_BYTES = 16
_CLIENT_LABEL = b"fedsim-auth-v1 coordinator"
_WORKER_LABEL = b"fedsim-auth-v1 worker"
_KEY_LABEL = b"fedsim-worker-key-v1 "


def new_nonce() -> bytes:
    """A fresh random nonce from the OS CSPRNG."""
    return secrets.token_bytes(NONCE_BYTES)


def certificate_binding(der: bytes | None) -> bytes:
    """SHA-256 of the worker's TLS certificate (DER), or empty for plain ``ws://``.

    Both sides put it in the transcript: the worker from its own certificate,
    the coordinator from the certificate it actually saw. A man in the middle
    terminating TLS with another certificate therefore cannot relay the proofs.
    """
    return hashlib.sha256(der).digest() if der else b""


def _proof(
    label: bytes, secret: bytes, worker_id: str, nonce: bytes, client_nonce: bytes, binding: bytes
) -> bytes:
    if len(nonce) != NONCE_BYTES or len(client_nonce) != NONCE_BYTES:
        raise WorkerError(f"auth nonces must be {NONCE_BYTES} bytes")
    ident = worker_id.encode()
    # Length-prefix the variable-length fields so that transcripts cannot collide.
    parts = [label, PROTOCOL_VERSION.to_bytes(4, "big"), len(ident).to_bytes(4, "big"), ident]
    parts += [nonce, client_nonce, len(binding).to_bytes(4, "big"), binding]
    return hmac.new(secret, b"|".join(parts), hashlib.sha256).digest()


def client_proof(
    secret: bytes, worker_id: str, nonce: bytes, client_nonce: bytes, binding: bytes = b""
) -> bytes:
    """What the coordinator sends to prove it holds ``secret``."""
    return _proof(_CLIENT_LABEL, secret, worker_id, nonce, client_nonce, binding)


def worker_proof(
    secret: bytes, worker_id: str, nonce: bytes, client_nonce: bytes, binding: bytes = b""
) -> bytes:
    """What the worker sends back to prove it holds ``secret`` too."""
    return _proof(_WORKER_LABEL, secret, worker_id, nonce, client_nonce, binding)


def verify(expected: bytes, received: bytes) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(expected, received)


def read_secret(path: str | Path) -> bytes:
    """The secret in a token file (surrounding whitespace ignored); WorkerError if unusable.

    ``-`` reads it from standard input (how a launcher hands a worker its
    secret without a file). A token file that others can read is refused, as
    ssh refuses such keys.
    """
    if str(path) == "-":
        return _checked(sys.stdin.buffer.readline().strip(), "standard input")
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
        secret = file.read_bytes().strip()
    except OSError as exc:
        raise WorkerError(f"cannot read token file {str(file)!r}: {exc.strerror}") from None
    if mode & 0o077:
        raise WorkerError(
            f"token file {str(file)!r} is readable by others (mode {mode & 0o777:o}); chmod 600 it"
        )
    return _checked(secret, f"token file {str(file)!r}")


def _checked(secret: bytes, source: str) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise WorkerError(
            f"{source} holds {len(secret)} bytes; at least "
            f"{MIN_SECRET_BYTES} are needed (e.g. `openssl rand -hex 32 > token`)"
        )
    return secret


def worker_key(master: bytes, worker_id: str) -> bytes:
    """The secret of worker ``worker_id``, derived from the run's master secret (HKDF-SHA256).

    The coordinator holds the master secret and derives each worker's key;
    a worker holds only its own. So a worker cannot authenticate to another
    as the coordinator: the proofs it can make are for its own key. Hex
    encoded, like a token file's secret.
    """
    _checked(master, "the master secret")
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_LABEL + worker_id.encode()
    )
    return hkdf.derive(master).hex().encode()


def write_worker_key(master: bytes, worker_id: str, path: str | Path) -> bytes:
    """A token file holding ``worker_id``'s derived key, readable by its owner only."""
    key = worker_key(master, worker_id)
    _write_private(Path(path), key)
    return key


def new_secret() -> bytes:
    """A fresh random secret (64 hex characters) from the OS CSPRNG."""
    return secrets.token_hex(32).encode()


def write_secret(path: str | Path) -> bytes:
    """Create a token file with a fresh random secret, readable by its owner only."""
    secret = new_secret()
    _write_private(Path(path), secret)
    return secret


def _write_private(file: Path, secret: bytes) -> None:
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)  # also when the file existed with a wider mode
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret + b"\n")
