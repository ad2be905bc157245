"""The coordinator's set of websocket workers, surviving workers that drop and return.

A :class:`Fleet` holds, per client index, how to (re)connect and the current
connection. Before each round, :meth:`Fleet.available` re-dials every client
whose connection died (with a short connect timeout), so a worker that was
restarted — by hand, by a service manager — is used again in the next round;
one that is still down is reported as dropped for that round. The coordinator
never waits longer than the connect and request timeouts.
"""

from __future__ import annotations

import contextlib
import logging
import tomllib
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fl.errors import ConfigError, FedsimError
from fl.task_fingerprint import fingerprint_difference
from workers.base import Worker
from workers.errors import WorkerError
from workers.tls import is_loopback_host
from workers.ws_client import ClientCertificate, WebsocketWorker

__all__ = [
    "Fleet",
    "RemoteWorkerSpec",
    "check_partition",
    "load_fleet_file",
    "load_workers_file",
]

logger = logging.getLogger("fedsim.fleet")
Connect = Callable[[], WebsocketWorker]


@dataclass(frozen=True)
class RemoteWorkerSpec:
    """One entry of a workers file: where a worker listens, which CA vouches for it, and
    the client certificate the coordinator presents to it (mutual TLS), if any."""

    worker_id: str
    url: str
    ca: Path | None
    client_cert: ClientCertificate | None = None


def load_workers_file(path: str | Path) -> tuple[list[RemoteWorkerSpec], Path | None]:
    """Parse a workers file (TOML) into specs and the optional shared token file.

    ::

        token_file = "token"          # master secret (relative to this file): each
                                      # worker's key is derived from it and its id
        ca = "ca.pem"                 # CA for every worker unless overridden
        client_cert = "coordinator.pem"       # optional, for workers that require
        client_key = "coordinator-key.pem"    # mutual TLS (--tls-client-ca)
        [[worker]]
        id = "worker-0"
        url = "wss://10.0.0.5:8765"
    """
    file = Path(path).expanduser()
    try:
        data = tomllib.loads(file.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read workers file {str(file)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"workers file {str(file)!r} is not valid TOML: {exc}") from None

    def local(value: object, what: str) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"workers file {str(file)!r}: {what} must be a string")
        return (file.parent / value).resolve()

    entries = data.get("worker")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"workers file {str(file)!r} lists no [[worker]] entries")
    default_ca = local(data.get("ca"), "ca")
    cert, key = (
        local(data.get("client_cert"), "client_cert"),
        local(data.get("client_key"), "client_key"),
    )
    if (cert is None) != (key is None):
        raise ConfigError(f"workers file {str(file)!r}: client_cert and client_key go together")
    client_cert = None if cert is None or key is None else (cert, key)
    specs = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"id", "url"} <= set(entry):
            raise ConfigError(f"workers file {str(file)!r}: worker #{number} needs id and url")
        url = str(entry["url"])
        if not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"workers file {str(file)!r}: {url!r} is not a ws:// or wss:// URL")
        if url.startswith("ws://") and not _loopback_url(url):
            raise ConfigError(
                f"workers file {str(file)!r}: {url!r} must use wss:// (TLS) beyond loopback"
            )
        ca = local(entry.get("ca"), "ca") or default_ca
        specs.append(RemoteWorkerSpec(str(entry["id"]), url, ca, client_cert))
    ids = [spec.worker_id for spec in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"workers file {str(file)!r}: worker ids must be distinct")
    return specs, local(data.get("token_file"), "token_file")


def _loopback_url(url: str) -> bool:
    return is_loopback_host(urllib.parse.urlsplit(url).hostname or "")


def load_fleet_file(path: str | Path, workers: int) -> tuple[list[RemoteWorkerSpec], Path]:
    """A workers file for a run with ``workers`` clients: specs and the token file."""
    specs, token_file = load_workers_file(path)
    if len(specs) != workers:
        raise ConfigError(
            f"workers file {str(path)!r} lists {len(specs)} workers, --workers is "
            f"{workers}: each worker serves partition I/N of N = --workers"
        )
    if token_file is None:
        raise ConfigError(f"workers file {str(path)!r} names no token_file")
    return specs, token_file


def check_partition(worker: WebsocketWorker, expected: str, task: str = "") -> WebsocketWorker:
    """Ping ``worker`` (the health check) and make sure it holds the expected data and,
    given the coordinator's ``task`` fingerprint (fl.tasks.task_fingerprint), runs the
    same task's code on the same data."""
    pong = worker.ping()
    if pong.data != expected:
        worker.close()
        raise ConfigError(
            f"worker {worker.id!r} holds [{pong.data or 'no data'}], this run needs [{expected}]:"
            " start it with the run's --task/--dataset/--partition/--seed/--train-samples"
        )
    if task and pong.task != task:
        worker.close()
        raise ConfigError(f"worker {worker.id!r} {fingerprint_difference(pong.task, task)}")
    return worker


class Fleet:
    """Clients by index; dead connections are re-dialled before each round."""

    def __init__(
        self, connectors: Sequence[Connect], ids: Sequence[str], *, min_live: int | None = None
    ) -> None:
        """Connect to every worker now; ``min_live`` of them must answer (default: all).

        ``ids`` are the workers' ids, by position, whether reachable or not. A
        worker that cannot be reached is left for the rounds to re-dial; one that
        answers with the wrong data (ConfigError) fails the start at once.
        """
        if len(ids) != len(connectors):
            raise ValueError(f"{len(ids)} worker ids for {len(connectors)} connectors")
        self.ids = tuple(ids)
        self._connectors = list(connectors)
        self._clients: list[WebsocketWorker | None] = [None] * len(connectors)
        needed = len(connectors) if min_live is None else min_live
        try:
            for index in range(len(connectors)):
                try:
                    self._clients[index] = connectors[index]()
                except WorkerError as exc:
                    logger.warning("worker #%d unavailable at start: %s", index, exc)
            live = len(self.clients)
            if live < needed:
                raise WorkerError(
                    f"only {live} of {len(connectors)} workers answered at start, "
                    f"fewer than the {needed} needed (--min-workers)"
                )
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._connectors)

    @property
    def clients(self) -> list[Worker]:
        """The live clients (no re-dialling)."""
        return [c for c in self._clients if c is not None and not c.closed]

    def available(self, indices: Sequence[int]) -> tuple[list[tuple[int, Worker]], list[int]]:
        """(index, worker) for every index that is reachable now, and the indices that are not."""
        live: list[tuple[int, Worker]] = []
        down: list[int] = []
        for index in indices:
            client = self._clients[index]
            if client is None or client.closed:
                client = self._redial(index)
            if client is None:
                down.append(index)
            else:
                live.append((index, client))
        return live, down

    def _redial(self, index: int) -> WebsocketWorker | None:
        try:
            client = self._connectors[index]()
        except FedsimError as exc:  # unreachable, refused, or now holding other data
            logger.warning("worker #%d still unavailable: %s", index, exc)
            self._clients[index] = None
            return None
        logger.warning("worker %s is back", client.id)
        self._clients[index] = client
        return client

    def mark_failed(self, index: int) -> None:
        """Drop a connection that failed mid-round; it is re-dialled next round."""
        client = self._clients[index]
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def close(self) -> None:
        for client in self._clients:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
