"""A session over fixed parties and a provider, as a coordinator drives it.

What a share group (``remote_shares``) and an authenticated group
(``authenticated_shares``) have in common: the workers' session keys, asking
every party a step (one after another, or at once on threads with
``parallel``), naming a worker that fails, dropping the state of handles that
died in batches, and making every worker forget the session when it closes.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from mpc.errors import MPCError
from mpc.protocols.sessions import KEYGEN
from workers.base import Worker
from workers.party import FORGET

__all__ = ["PartyGroup"]

T = TypeVar("T")
_DROP_BATCH = 64  # dropped ids sent in one request, with the next operation


class PartyGroup:
    """One session over ``parties`` (two or more, in order) and a ``provider`` apart.

    Subclasses name their drop step (``drop_step``: it forgets the ids it is
    given) and their kind (``kind``, for messages). Use as a context manager,
    or call :meth:`close`.
    """

    kind = "group"
    drop_step = ""

    def __init__(
        self,
        parties: Sequence[Worker],
        provider: Worker,
        *,
        session_prefix: str,
        parallel: bool = False,
    ) -> None:
        ids = [w.id for w in parties]
        if len(ids) < 2 or len(set(ids)) != len(ids):
            raise MPCError(f"a {self.kind} needs at least two distinct parties, got {ids}")
        if provider.id in ids:
            raise MPCError(f"the provider {provider.id!r} cannot also be a party")
        self.parties = tuple(parties)
        self.provider = provider
        self.session = f"{session_prefix}-{secrets.token_hex(8)}"
        self.closed = False
        self._keys: dict[str, torch.Tensor] = {}
        self._owners: dict[str, Worker] = {}  # other workers with a session key
        self._dropped: list[str] = []
        self._lock = threading.Lock()
        # Room for two threads' requests to every party at once.
        self._pool = ThreadPoolExecutor(2 * len(self.parties) + 2) if parallel else None

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> PartyGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _before_close(self) -> None:
        """What a subclass must finish before the workers forget the session."""

    def close(self) -> None:
        """Every worker forgets the session (best effort: a dead one has already)."""
        if self.closed:
            return
        self.closed = True
        self._before_close()
        known = {w.id: w for w in (*self.parties, self.provider)}
        known.update(self._owners)
        for worker_id, worker in known.items():
            if worker_id in self._keys and not worker.closed:
                with contextlib.suppress(Exception):
                    worker.party_op(FORGET, session=self.session)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def _check_open(self) -> None:
        if self.closed:
            raise MPCError(f"{self.kind} {self.session} is closed")

    def _keygen(self, worker: Worker) -> torch.Tensor:
        """``worker``'s session public key (it makes its pair on first use)."""
        if worker.id not in self._keys:
            if worker.id.startswith(":"):
                raise MPCError(f"worker id {worker.id!r} is reserved")
            public = worker.party_op(KEYGEN, session=self.session)["public_key"]
            if not isinstance(public, torch.Tensor) or public.dtype != torch.uint8:
                raise MPCError(f"{worker.id!r} returned no public key")
            self._keys[worker.id] = public
            if worker not in self.parties and worker is not self.provider:
                self._owners[worker.id] = worker
        return self._keys[worker.id]

    # ------------------------------------------------------------ requests

    def _call(self, worker: Worker, fn: Callable[[Worker], T]) -> T:
        try:
            return fn(worker)
        except MPCError:
            raise
        except Exception as exc:
            raise MPCError(f"party {worker.id!r} failed: {exc}") from exc

    def _each(self, workers: Sequence[Worker], fn: Callable[[Worker], T]) -> list[T]:
        """``fn`` on every worker (at once with ``parallel``); the first failure is
        raised, naming the worker, after every call has returned."""
        if self._pool is None or len(workers) < 2:
            return [self._call(worker, fn) for worker in workers]
        futures = [self._pool.submit(self._call, worker, fn) for worker in workers]
        return [future.result() for future in futures]

    def _on_parties(
        self, make_args: Callable[[int], dict[str, Any]], step: str
    ) -> list[dict[str, Any]]:
        """Party step ``step`` on every party, with the arguments ``make_args(index)``."""
        self._flush_drops()
        positions = {w.id: index for index, w in enumerate(self.parties)}
        return self._each(
            self.parties,
            lambda w: w.party_op(step, session=self.session, **make_args(positions[w.id])),
        )

    def _release(self, tensor_id: str) -> None:
        """A handle died: its state is dropped with a later operation."""
        with self._lock:
            self._dropped.append(tensor_id)

    def _flush_drops(self, force: bool = False) -> None:
        with self._lock:
            if not self._dropped or (len(self._dropped) < _DROP_BATCH and not force):
                return
            ids, self._dropped = self._dropped, []
        for worker in self.parties:
            if not worker.closed:
                with contextlib.suppress(Exception):  # a dead party has forgotten them
                    worker.party_op(self.drop_step, session=self.session, ids=ids)
