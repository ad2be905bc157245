"""What a worker does about peers that have not authenticated (yet).

- ``Admission``: which handshakes in progress the worker keeps, so that a crowd
  of silent or slow strangers cannot lock the coordinator out;
- ``PeerLogQuota`` and ``configure_peer_logging``: what strangers can make the
  worker write to its log, bounded.

The server (``workers/ws_server.py``) calls these; the threat model
(``docs/threat-model.md``) says what they defend.
"""

from __future__ import annotations

import asyncio
import logging
import time

from websockets.asyncio.server import ServerConnection

__all__ = [
    "CROWDED",
    "MAX_PENDING_HANDSHAKES",
    "MAX_PENDING_PER_ADDRESS",
    "PEER_LOG_BURST",
    "PEER_LOG_PERIOD_SECONDS",
    "Admission",
    "PeerLogQuota",
    "configure_peer_logging",
    "peer_logger",
]

# Handshakes in progress, from one address and in all (see Admission).
MAX_PENDING_PER_ADDRESS = 4
MAX_PENDING_HANDSHAKES = 64
CROWDED = "too many pending handshakes"  # the close reason of a dropped handshake
# What strangers make the worker say: refusals, dropped and failed handshakes.
peer_logger = logging.getLogger("fedsim.worker.peers")
# At most this many such lines per period reach the log (see PeerLogQuota).
PEER_LOG_BURST, PEER_LOG_PERIOD_SECONDS = 20, 10.0


class _OneLine(logging.Filter):
    """Log a peer's failed opening handshake as one line, not websockets' traceback:
    any stranger can cause one, and the reason is all an operator needs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            cause = error.__cause__ or error.__context__
            reason = f"{error}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
            record.msg, record.args = f"{record.getMessage()}: {reason}", None
            record.exc_info = record.exc_text = None
        return True


class PeerLogQuota(logging.Filter):
    """Strangers choose how often the worker would log a refusal (thousands a
    second under a flood): at most ``PEER_LOG_BURST`` lines every
    ``PEER_LOG_PERIOD_SECONDS`` pass, and the next line that passes says how
    many were left out."""

    def __init__(self) -> None:
        super().__init__()
        self._window_start = time.monotonic()
        self._passed = self._left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._window_start >= PEER_LOG_PERIOD_SECONDS:
            self._window_start, self._passed = now, 0
        if self._passed >= PEER_LOG_BURST:
            self._left_out += 1
            return False
        self._passed += 1
        if self._left_out:
            record.msg = f"{record.getMessage()} ({self._left_out} similar lines left out)"
            record.args, self._left_out = None, 0
        return True


def configure_peer_logging() -> logging.Logger:
    """One quota for fedsim's and websockets' lines about peers; websockets' logger."""
    websockets_logger = logging.getLogger("fedsim.worker.websockets")
    if not any(isinstance(f, PeerLogQuota) for f in peer_logger.filters):
        quota = PeerLogQuota()
        peer_logger.addFilter(quota)
        # One line per failed handshake (_OneLine) and none per connection
        # opened or closed: at INFO websockets logs two for every stranger.
        websockets_logger.setLevel(logging.WARNING)
        websockets_logger.addFilter(_OneLine())
        websockets_logger.addFilter(quota)
    return websockets_logger


class Admission:
    """Handshakes in progress, oldest first per peer address.

    A newcomer is always admitted: when its address already has
    ``MAX_PENDING_PER_ADDRESS`` handshakes in progress, that address's oldest
    is dropped; when the worker has ``MAX_PENDING_HANDSHAKES``, the oldest of
    the address holding the most is. Peers on other addresses than the
    coordinator's therefore cannot crowd it out, whatever their number or
    rate; the rest is bounded by the authentication deadline.
    """

    def __init__(self) -> None:
        self._by_address: dict[str, list[ServerConnection]] = {}
        self._dropped: set[ServerConnection] = set()  # until their handler leaves
        self._closing: set[asyncio.Task[None]] = set()  # referenced until done

    def admit(self, connection: ServerConnection) -> None:
        address = str(connection.remote_address[0])
        own = self._by_address.get(address, [])
        if len(own) >= MAX_PENDING_PER_ADDRESS:
            self._drop(own[0])
        elif sum(map(len, self._by_address.values())) >= MAX_PENDING_HANDSHAKES:
            self._drop(max(self._by_address.values(), key=len)[0])
        # Looked up again: a drop that emptied an address's queue removed it.
        self._by_address.setdefault(address, []).append(connection)

    def settle(self, connection: ServerConnection) -> bool:
        """Leave, on authentication; False if the connection was dropped meanwhile
        (its close is already on its way)."""
        dropped = connection in self._dropped
        self.leave(connection)
        return not dropped

    def leave(self, connection: ServerConnection) -> None:
        self._dropped.discard(connection)
        address = str(connection.remote_address[0])
        queue = self._by_address.get(address, [])
        if connection in queue:
            queue.remove(connection)
        if not queue:
            self._by_address.pop(address, None)

    def _drop(self, connection: ServerConnection) -> None:
        peer_logger.warning(
            "dropped %s: a newer handshake needs its slot", connection.remote_address
        )
        self.leave(connection)
        self._dropped.add(connection)
        # Its handler, waiting in recv(), then ends with ConnectionClosed.
        task = asyncio.get_running_loop().create_task(connection.close(1013, CROWDED))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
