"""Websocket transport, server side: one worker process serving one coordinator.

A thin asyncio adapter over :class:`~workers.core.WorkerCore`: every binary
frame is a request handed to ``core.handle_bytes`` (in a thread, so keepalive
pings are answered while a long training request runs) and the reply goes back
as one binary frame. The server

- authenticates every connection first (``workers/auth.py``): a peer that does
  not prove it holds the secret, or sends anything else first, gets a refusal
  and a clean close, with the reason logged;
- reads at most 4 KiB a frame until then, from the first byte (a frame packed
  into the same write as the HTTP upgrade included), and admits handshakes so
  that a crowd of silent peers cannot lock the coordinator out (``workers/peers.py``);
- serves one coordinator connection at a time (a second gets close code 1013)
  and keeps the objects of each connection in that connection's own store,
  seeded with the worker's own data (which is never copied per connection);
- turns off permessage-deflate (it cuts tensor throughput, see docs/levels.md)
  and enforces an explicit frame size limit sized for model states.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from workers.auth import certificate_binding, client_proof, new_nonce, verify, worker_proof
from workers.cohort import SERVED_MIN_COHORT
from workers.core import WorkerCore
from workers.errors import ProtocolError, WorkerError
from workers.memory import return_free_memory
from workers.messages import (
    PROTOCOL_VERSION,
    AuthChallenge,
    AuthResponse,
    AuthResult,
    ErrorReply,
    decode_message,
)
from workers.peers import CROWDED, Admission, configure_peer_logging, peer_logger

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "ServerConfig", "WorkerServer"]

# A McMahan CNN state is 6.7 MB on the wire; shards of a few thousand images are
# tens of MB. 256 MiB bounds what one frame may make the worker buffer.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 2**20
# Before authentication: the AuthResponse is ~300 bytes.
MAX_AUTH_FRAME_BYTES = 4096
BUSY = "worker busy: serving another coordinator"
# On SIGTERM: how long closing handshakes may take before the process exits.
_CLOSE_GRACE_SECONDS = 2.0
logger = logging.getLogger("fedsim.worker")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """How one worker listens; ``secret=None`` only ever on loopback (checked by the CLI)."""

    worker_id: str
    host: str
    port: int
    secret: bytes | None
    ssl_context: ssl.SSLContext | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    auth_timeout: float = 5.0
    ping_interval: float | None = 20.0
    data_description: str = ""
    # The task the worker loaded (fl.tasks.task_fingerprint), answered in Pong.
    task_fingerprint: str = ""
    # The DER certificate served over TLS: bound into the authentication proofs.
    certificate_der: bytes | None = None
    # The fewest contributions a sum this worker helps open may hold, whatever
    # the coordinator asks (workers.party).
    min_cohort: int = SERVED_MIN_COHORT
    # Vouches for this worker's session keys to the other workers (workers.party).
    peer_secret: bytes | None = None


class WorkerServer:
    """Serves a worker's objects and data over websockets."""

    def __init__(self, config: ServerConfig, objects: Mapping[str, object] | None = None) -> None:
        self.config = config
        self._objects = dict(objects or {})
        self._busy = False
        self._admission = Admission()
        self.server: Server | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> int:
        """Bind and listen; returns the port (useful with ``port=0``)."""
        cfg = self.config
        self.server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            ssl=cfg.ssl_context,
            compression=None,
            # Raised for a connection once it has authenticated (_handle). Set
            # here, the parser applies it to the very first frame.
            max_size=MAX_AUTH_FRAME_BYTES,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_interval,
            logger=configure_peer_logging(),
        )
        port: int = self.server.sockets[0].getsockname()[1] if self.server.sockets else cfg.port
        return port

    async def serve_until(self, stop: asyncio.Event, on_ready: Callable[[int], None]) -> None:
        """Run until ``stop`` is set, calling ``on_ready(port)`` once listening.

        Then close every connection (close frames to the peers) and wait a
        short grace for the closing handshakes, not for a request in progress.
        """
        port = await self.start()
        on_ready(port)
        try:
            await stop.wait()
        finally:
            assert self.server is not None
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), _CLOSE_GRACE_SECONDS)

    # ------------------------------------------------------------ connections

    async def _handle(self, connection: ServerConnection) -> None:
        peer = connection.remote_address
        self._admission.admit(connection)
        try:
            authenticated = await self._authenticate(connection, peer)
        except ConnectionClosed as closed:
            peer_logger.warning("refused %s: closed during authentication (%s)", peer, closed)
            return
        finally:
            self._admission.leave(connection)
        if not authenticated:
            return
        connection.protocol.max_message_size = self.config.max_message_bytes
        try:
            logger.info("coordinator %s connected", peer)
            await self._serve(connection)
        except ConnectionClosed as closed:
            logger.info("connection from %s closed: %s", peer, closed)
        finally:
            self._busy = False
            # What the connection's objects and frames took goes back to the kernel.
            await asyncio.to_thread(return_free_memory)

    async def _authenticate(self, connection: ServerConnection, peer: object) -> bool:
        cfg = self.config
        if cfg.secret is None:
            return self._claim() or await self._refuse(connection, peer, BUSY, code=1013)
        nonce = new_nonce()
        await connection.send(AuthChallenge(cfg.worker_id, nonce.hex(), PROTOCOL_VERSION).encode())
        try:
            first = await asyncio.wait_for(connection.recv(), cfg.auth_timeout)
        except TimeoutError:
            return await self._refuse(connection, peer, "no authentication within the time limit")
        try:
            if isinstance(first, str):
                raise ProtocolError("text frame")
            msg = decode_message(first)
        except ProtocolError as exc:
            return await self._refuse(connection, peer, f"bad authentication frame ({exc})")
        if not isinstance(msg, AuthResponse):
            return await self._refuse(connection, peer, f"{msg.TAG!r} before authentication")
        binding = certificate_binding(cfg.certificate_der)
        try:
            client_nonce = bytes.fromhex(msg.client_nonce)
            proof = bytes.fromhex(msg.proof)
            expected = client_proof(cfg.secret, cfg.worker_id, nonce, client_nonce, binding)
            own_proof = worker_proof(cfg.secret, cfg.worker_id, nonce, client_nonce, binding)
        except (ValueError, WorkerError) as exc:  # bad hex or nonce length
            return await self._refuse(connection, peer, f"malformed authentication ({exc})")
        if not verify(expected, proof):
            return await self._refuse(connection, peer, "wrong secret")
        # Authenticated: from now on no newcomer may drop it, unless one just did.
        if not self._admission.settle(connection):
            await connection.close(1013, CROWDED)  # the client tries again
            return False
        # Busy is decided only now, so that strangers cannot lock the coordinator out.
        if not self._claim():
            return await self._refuse(connection, peer, BUSY, code=1013)
        try:
            accepted = AuthResult(True, own_proof.hex(), "", cfg.max_message_bytes)
            await connection.send(accepted.encode())
        except BaseException:
            self._busy = False  # the slot is released only by _handle once serving
            raise
        return True

    def _claim(self) -> bool:
        """Take the single coordinator slot if it is free (released when the connection ends)."""
        if self._busy:
            return False
        self._busy = True
        return True

    async def _refuse(
        self, connection: ServerConnection, peer: object, reason: str, *, code: int = 1008
    ) -> bool:
        peer_logger.warning("refused %s: %s", peer, reason)
        try:
            await connection.send(AuthResult(False, "", reason, 0).encode())
            await connection.close(code, "refused")
        except ConnectionClosed:
            pass
        return False

    async def _serve(self, connection: ServerConnection) -> None:
        core = WorkerCore(
            self.config.worker_id,
            objects=self._objects,
            data_description=self.config.data_description,
            task_fingerprint=self.config.task_fingerprint,
            private=frozenset(self._objects),
            min_cohort=self.config.min_cohort,
            peer_secret=self.config.peer_secret,
        )
        try:
            async for frame in connection:
                if isinstance(frame, str):
                    reply = ErrorReply("protocol", "text frames are not accepted").encode()
                else:
                    reply = await asyncio.to_thread(core.handle_bytes, frame)
                await connection.send(reply)
        finally:
            # The connection's objects go with it. A ConnectionClosed ending the
            # loop is kept by the connection, with its traceback and so this
            # frame: its locals would otherwise keep them alive.
            core = frame = reply = None  # type: ignore[assignment]


def run_worker(
    config: ServerConfig,
    objects: Mapping[str, object] | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> NoReturn:
    """Serve until SIGINT or SIGTERM, then exit the process; ``on_ready(port)`` runs once
    listening.

    A request may be running in a thread when the signal comes (a training of
    minutes): the worker does not wait for it. Its connection is closed, so
    the coordinator sees the worker gone, and the process exits with 0, as
    its launcher expects of a worker it stopped.
    """
    import os
    import signal
    import sys

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        server = WorkerServer(config, objects)
        await server.serve_until(stop, on_ready or (lambda port: None))
        logger.info("stopped")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # asyncio.run would join the thread of a running request first.
        os._exit(0)

    asyncio.run(main())
    raise AssertionError("unreachable: main() exits the process")
