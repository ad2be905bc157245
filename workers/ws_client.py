"""Websocket transport, client side: a :class:`Worker` proxy for a remote worker.

The coordinator's view of a worker process: the same :class:`MessageWorker`
as the virtual worker, whose ``_roundtrip`` sends one binary frame and waits,
with a per-request timeout, for the one reply. Connecting runs the mutual
challenge–response of ``workers/auth.py`` (and TLS certificate verification
against a CA for ``wss://``) before any request is sent.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from pathlib import Path

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage
from websockets.sync.client import ClientConnection, connect

from fl.errors import FedsimError
from workers.auth import certificate_binding, client_proof, new_nonce, verify, worker_proof
from workers.base import DELETE_BATCH_SIZE
from workers.errors import ProtocolError, WorkerError
from workers.message_worker import MessageWorker
from workers.messages import (
    PROTOCOL_VERSION,
    AuthChallenge,
    AuthResponse,
    AuthResult,
    decode_message,
)
from workers.peers import CROWDED
from workers.ws_server import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["CONNECT_TIMEOUT_SECONDS", "ClientCertificate", "WebsocketWorker", "client_ssl_context"]

# The coordinator's certificate and private key (PEM files), for mutual TLS.
ClientCertificate = tuple[Path, Path]

# Connecting and authenticating: a refused port fails at once, so this bounds
# only a peer that is slow to answer; a TLS handshake on a crowded machine can
# take seconds, hence the margin.
CONNECT_TIMEOUT_SECONDS = 30.0
# Retrying a handshake the worker dropped for a newer one (workers.peers.Admission).
_FIRST_RETRY_PAUSE, _LAST_RETRY_PAUSE = 0.05, 1.0


class _Crowded(WorkerError):
    """The worker dropped this handshake to admit a newer one from the same address."""


def _crowded_out(closed: ConnectionClosed) -> bool:
    return closed.rcvd is not None and closed.rcvd.reason == CROWDED


def client_ssl_context(
    cafile: str | Path | None, client_cert: ClientCertificate | None = None
) -> ssl.SSLContext:
    """Verify the worker's certificate and host name against ``cafile`` (or the system CAs);
    present ``client_cert`` (certificate, key) to workers that require one (mutual TLS)."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if client_cert is not None:
        certfile, keyfile = client_cert
        try:
            context.load_cert_chain(str(certfile), str(keyfile))
        except (OSError, ssl.SSLError) as exc:
            raise WorkerError(
                f"cannot load the client certificate {str(certfile)!r}: {exc}"
            ) from None
    return context


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind ``exc``, if one is in its chain of causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class WebsocketWorker(MessageWorker):
    """A remote worker at ``url`` (``ws://`` or ``wss://``)."""

    def __init__(
        self,
        worker_id: str,
        url: str,
        *,
        secret: bytes | None,
        cafile: str | Path | None = None,
        client_cert: ClientCertificate | None = None,
        timeout: float = 600.0,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        delete_batch_size: int = DELETE_BATCH_SIZE,
    ) -> None:
        super().__init__(worker_id, delete_batch_size=delete_batch_size)
        self.url = url
        self.timeout = timeout
        # The worker's frame limit, from its AuthResult (without a secret there
        # is none: the worker's default is assumed, which is also ours).
        self._peer_max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
        ssl_context = client_ssl_context(cafile, client_cert) if url.startswith("wss://") else None
        deadline = time.monotonic() + connect_timeout
        pause = _FIRST_RETRY_PAUSE
        while True:
            self._ws = self._open(ssl_context, connect_timeout, max_message_bytes)
            try:
                self._authenticate(secret, connect_timeout)
                return
            except _Crowded as crowded:
                # The worker dropped this handshake for a newer one from the same
                # address (a crowd of strangers there): try again until the deadline.
                self._ws.close()
                if time.monotonic() + pause > deadline:
                    raise WorkerError(f"worker {worker_id!r}: {crowded}") from None
            except BaseException:
                self._ws.close()
                raise
            time.sleep(pause)
            pause = min(2 * pause, _LAST_RETRY_PAUSE)

    def _open(
        self, ssl_context: ssl.SSLContext | None, timeout: float, max_message_bytes: int
    ) -> ClientConnection:
        try:
            return connect(
                self.url,
                ssl=ssl_context,
                compression=None,
                max_size=max_message_bytes,
                proxy=None,
                open_timeout=timeout,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=2,
            )
        except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as exc:
            reason = str(exc) or type(exc).__name__
            tls = _tls_error(exc)
            # A certificate of the worker's that this side refuses is its own error.
            refused_by_worker = not isinstance(tls, ssl.SSLCertVerificationError) and (
                tls is not None or isinstance(exc, (ConnectionClosed, InvalidMessage))
            )
            if ssl_context is not None and refused_by_worker:
                # Under TLS 1.3 a worker refuses a client certificate (or its
                # absence) after the handshake: the HTTP upgrade then meets a
                # closed connection, with the alert itself lost on the way.
                reason = (
                    f"the connection closed during the TLS or HTTP handshake ({reason}); a "
                    "worker serving mutual TLS (--tls-client-ca) closes it unless the "
                    "coordinator presents a client certificate from that CA"
                )
            raise WorkerError(
                f"cannot connect to worker {self.id!r} at {self.url}: {reason}"
            ) from None

    def _recv(self, timeout: float, what: str) -> bytes:
        try:
            frame = self._ws.recv(timeout=timeout)
        except TimeoutError:
            self._ws.close()
            self._closed = True
            raise WorkerError(
                f"worker {self.id!r} did not answer {what} within {timeout:g} s"
            ) from None
        except ConnectionClosed as exc:
            if _crowded_out(exc):  # before authentication: the caller connects again
                raise _Crowded(str(exc)) from None
            self._closed = True
            raise WorkerError(f"worker {self.id!r} closed the connection: {exc}") from None
        if isinstance(frame, str):
            raise WorkerError(f"worker {self.id!r} sent a text frame")
        return frame

    def _authenticate(self, secret: bytes | None, timeout: float) -> None:
        """The coordinator's half of workers/auth.py; any misbehaviour is a WorkerError."""
        if secret is None:
            return
        try:
            self._handshake(secret, timeout)
        except (ProtocolError, ValueError) as exc:  # garbled frames, bad hex
            raise WorkerError(f"worker {self.id!r}: bad authentication handshake: {exc}") from None

    def _handshake(self, secret: bytes, timeout: float) -> None:
        challenge = decode_message(self._recv(timeout, "the connection"))
        if not isinstance(challenge, AuthChallenge):
            raise WorkerError(f"worker {self.id!r} did not start with an auth challenge")
        if challenge.version != PROTOCOL_VERSION:
            raise WorkerError(
                f"worker {self.id!r} speaks protocol {challenge.version}, not {PROTOCOL_VERSION}"
            )
        if challenge.worker_id != self.id:
            raise WorkerError(f"{self.url} is worker {challenge.worker_id!r}, not {self.id!r}")
        binding = certificate_binding(self._peer_certificate())
        nonce, client_nonce = bytes.fromhex(challenge.nonce), new_nonce()
        proof = client_proof(secret, self.id, nonce, client_nonce, binding)
        try:
            self._ws.send(AuthResponse(client_nonce.hex(), proof.hex()).encode())
        except ConnectionClosed as exc:
            if _crowded_out(exc):
                raise _Crowded(str(exc)) from None
            raise WorkerError(f"worker {self.id!r} closed the connection: {exc}") from None
        result = decode_message(self._recv(timeout, "authentication"))
        if not isinstance(result, AuthResult) or not result.ok:
            reason = result.reason if isinstance(result, AuthResult) else result.TAG
            raise WorkerError(f"worker {self.id!r} refused authentication: {reason}")
        expected = worker_proof(secret, self.id, nonce, client_nonce, binding)
        if not verify(expected, bytes.fromhex(result.proof)):
            raise WorkerError(f"worker {self.id!r} could not prove it holds the secret")
        self._peer_max_message_bytes = result.max_message_bytes

    def _peer_certificate(self) -> bytes | None:
        sock = self._ws.socket
        return sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None

    def _roundtrip(self, data: bytes) -> bytes:
        if len(data) > self._peer_max_message_bytes:
            # Sent, it would close the connection and lose its objects.
            raise WorkerError(
                f"request of {len(data) / 2**20:.1f} MiB exceeds the worker's frame limit "
                f"of {self._peer_max_message_bytes / 2**20:.1f} MiB (worker {self.id!r}, "
                "--max-message-mb); not sent"
            )
        try:
            self._ws.send(data)
        except ConnectionClosed as exc:
            self._closed = True
            raise WorkerError(f"worker {self.id!r} closed the connection: {exc}") from None
        return self._recv(self.timeout, "a request")

    def close(self) -> None:
        # Flushing pending deletions is a courtesy: the worker drops this
        # connection's objects when it closes anyway.
        try:
            with contextlib.suppress(FedsimError, RuntimeError):
                super().close()
        finally:
            self._ws.close()
