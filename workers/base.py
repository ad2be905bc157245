"""The client side of a worker: the :class:`Worker` interface flows program against.

Its one implementation, over encoded messages, is
:class:`~workers.message_worker.MessageWorker`; transports (in-process,
websocket) subclass that.
"""

from __future__ import annotations

import collections
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fl.training import TrainConfig
from workers.codec import Value
from workers.core import TRAIN_X_ID, TRAIN_Y_ID
from workers.errors import WorkerError
from workers.messages import (
    EvalReply,
    FitReply,
    Pong,
    PutObject,
    TrainReply,
)
from workers.plan import Plan
from workers.pointer import PlanPointer, Pointer

__all__ = ["DELETE_BATCH_SIZE", "REPLY_HEADER_RESERVE", "Broadcast", "Worker"]

DELETE_BATCH_SIZE = 64
# Spare header bytes in a Broadcast frame: a FitReply's header is longer than the
# PutObject's it answers (loss, steps, seconds against an id) by about 60 bytes.
REPLY_HEADER_RESERVE = 256


@dataclass(frozen=True)
class Broadcast:
    """One value encoded once, to be stored on many workers under one id.

    Encoding a 1.7 M-parameter state copies it into a frame; a round that hands
    the global model to a hundred clients pays that once instead of a hundred
    times. The frame is an ordinary PutObject: each worker decodes and checks it
    as any other request, and each counts its bytes. Its header keeps
    :data:`REPLY_HEADER_RESERVE` spare bytes, so that a worker can answer ``Fit``
    in the same buffer (``WorkerCore.handle_bytes``).
    """

    obj_id: str
    frame: bytes
    # For a state dict: each tensor's shape and dtype — what a state trained from
    # it must have when a worker sends it back (checked by the coordinator).
    layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]] | None = None

    @classmethod
    def of(cls, value: Value) -> Broadcast:
        obj_id = f"broadcast:{secrets.token_hex(8)}"
        layout = None
        if isinstance(value, Mapping) and all(isinstance(t, torch.Tensor) for t in value.values()):
            layout = {key: (tuple(t.shape), t.dtype) for key, t in value.items()}
        return cls(obj_id, PutObject(obj_id, value).encode(reserve=REPLY_HEADER_RESERVE), layout)


class Worker(ABC):
    """A worker as the coordinator sees it: remote objects behind pointers.

    Counters (cumulative, over encoded frames): ``bytes_sent``,
    ``bytes_received``, ``messages_sent`` and ``message_counts`` (per message tag).
    """

    def __init__(self, worker_id: str, *, delete_batch_size: int = DELETE_BATCH_SIZE) -> None:
        if delete_batch_size < 1:
            raise WorkerError(f"delete batch size must be >= 1, got {delete_batch_size}")
        self.id = worker_id
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.message_counts: collections.Counter[str] = collections.Counter()
        self.delete_batch_size = delete_batch_size
        self._pending_deletes: list[str] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once closed by the client, or once its connection was lost."""
        return self._closed

    # ------------------------------------------------------------ the interface

    @abstractmethod
    def send(
        self, value: Value, *, obj_id: str | None = None, owned: bool | None = None
    ) -> Pointer:
        """Store ``value`` on the worker and return a pointer to it.

        ``owned`` (whether dropping the pointer frees the object) defaults to
        True for an id allocated here and False for an ``obj_id`` the caller
        names: a named object (``TRAIN_X_ID``...) is a well-known handle that
        other requests refer to by name, not a temporary.
        """

    @abstractmethod
    def send_broadcast(self, broadcast: Broadcast) -> Pointer:
        """Store a :class:`Broadcast`'s value; the pointer frees it when dropped."""

    @abstractmethod
    def get(self, ptr_or_id: Pointer | str, *, delete: bool = True) -> Value:
        """Fetch a value; with ``delete`` it is freed remotely and its pointer dies."""

    @abstractmethod
    def delete(self, items: Iterable[Pointer | str]) -> int:
        """Free objects now (with any pending deletions) in one message; returns how many."""

    @abstractmethod
    def run_op(self, op: str, *args: Any, **kwargs: Any) -> Pointer:
        """Run an allowlisted op remotely; Pointer args must live on this worker."""

    @abstractmethod
    def send_plan(self, plan: Plan, *, plan_id: str | None = None) -> PlanPointer:
        """Store a plan on the worker, to run it by id many times."""

    @abstractmethod
    def run_plan(self, plan: PlanPointer | str, *args: Pointer | str) -> list[Pointer]:
        """Run a stored plan on remote objects; the outputs stay remote."""

    @abstractmethod
    def train(
        self,
        model: str,
        state: Pointer | str,
        config: TrainConfig,
        *,
        seed: int,
        x_id: Pointer | str = TRAIN_X_ID,
        y_id: Pointer | str = TRAIN_Y_ID,
        sealed: bool = False,
    ) -> tuple[Pointer, TrainReply]:
        """Train locally on the worker's data; returns a pointer to the new state dict.

        A ``sealed`` result can be consumed only by party steps (secure
        aggregation): the worker refuses to send it back or compute on it.
        """

    @abstractmethod
    def fit(
        self,
        model: str,
        state: Pointer,
        config: TrainConfig,
        *,
        seed: int,
        x_id: Pointer | str = TRAIN_X_ID,
        y_id: Pointer | str = TRAIN_Y_ID,
    ) -> FitReply:
        """Train from ``state`` and get the trained state back in one round trip.

        The worker consumes ``state`` (its tensors become the training model's
        own): the pointer dies with the request, whether or not it succeeds.
        """

    @abstractmethod
    def evaluate(
        self,
        model: str,
        state: Pointer | str,
        *,
        x_id: Pointer | str = TRAIN_X_ID,
        y_id: Pointer | str = TRAIN_Y_ID,
        batch_size: int = 1000,
    ) -> EvalReply:
        """Evaluate a stored state on the worker's data."""

    @abstractmethod
    def ping(self) -> Pong:
        """Health check."""

    @abstractmethod
    def party_op(self, op: str, **args: Value) -> dict[str, Value]:
        """Run MPC party step ``op`` (``workers.party``); returns its public outputs."""

    # ----------------------------------------------------- shared behaviour

    def move(self, ptr: Pointer, dest: Worker) -> Pointer:
        """Move an object to ``dest`` through the coordinator (get with delete, then send).

        If sending to ``dest`` fails the value is put back on this worker under
        its old id and the pointer revived, so a failed move loses nothing.
        Direct worker-to-worker transfer (the value not passing through the
        coordinator) is a possible later optimisation for remote workers.
        """
        if ptr.worker is not self:
            raise WorkerError(f"pointer {ptr.id!r} lives on {ptr.worker.id!r}, not {self.id!r}")
        value = self.get(ptr, delete=True)
        try:
            return dest.send(value)
        except Exception:
            self.send(value, obj_id=ptr.id, owned=False)  # restore; ``ptr`` owns it again
            ptr._revive()
            raise

    def flush(self) -> int:
        """Send pending deletions of garbage-collected pointers now; returns how many freed."""
        return self.delete(()) if self._pending_deletes else 0

    def close(self) -> None:
        """Flush pending deletions and refuse further requests. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True

    def _discard(self, obj_id: str) -> None:
        """Queue ``obj_id`` for batched deletion — called from ``Pointer.__del__``: no I/O."""
        self._pending_deletes.append(obj_id)

    def _take_pending(self) -> list[str]:
        pending, self._pending_deletes = self._pending_deletes, []
        return pending

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
