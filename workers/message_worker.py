"""The message implementation of the :class:`~workers.base.Worker` interface.

:class:`MessageWorker` implements every method as *encode request →
_roundtrip → decode reply*, so a transport only supplies
``_roundtrip(bytes) -> bytes``: the in-process
:class:`~workers.virtual.VirtualWorker` calls a ``WorkerCore`` directly, a
websocket client sends the bytes to a server. Because every transport moves the
same encoded frames, ``bytes_sent``/``bytes_received`` mean the same for all.

Object ids are chosen here, on the client (``<random prefix>:<counter>``), so a
request never waits for the worker to name its result. Threads may share a
worker: each request and its reply are exchanged under a lock, one at a time.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from abc import abstractmethod
from collections.abc import Iterable
from typing import Any, TypeVar

import torch

from fl.training import TrainConfig
from workers.base import DELETE_BATCH_SIZE, Broadcast, Worker
from workers.codec import DTYPES, Value
from workers.core import TRAIN_X_ID, TRAIN_Y_ID
from workers.errors import ProtocolError, RemoteError, WorkerError
from workers.messages import (
    Ack,
    DeleteObjects,
    ErrorReply,
    EvalReply,
    Evaluate,
    Fit,
    FitReply,
    GetObject,
    ObjectReply,
    OpReply,
    PartyOp,
    PartyReply,
    Ping,
    Pong,
    PutObject,
    Reply,
    Request,
    RunOp,
    RunPlan,
    SendPlan,
    Train,
    TrainReply,
    decode_message,
)
from workers.plan import Plan
from workers.pointer import PlanPointer, Pointer

__all__ = ["MessageWorker"]

_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


R = TypeVar("R", bound=Reply)


class MessageWorker(Worker):
    """Implements :class:`Worker` over the message protocol; subclasses supply a transport."""

    # True when each reply ``_roundtrip`` returns is a fresh buffer nobody else
    # holds: the reply's tensors may then be decoded in place (no copy). A
    # subclass whose ``_roundtrip`` keeps or reuses the buffers it returns (to
    # record or replay them) must set it back to False.
    _replies_in_place = False

    def __init__(self, worker_id: str, *, delete_batch_size: int = DELETE_BATCH_SIZE) -> None:
        super().__init__(worker_id, delete_batch_size=delete_batch_size)
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count()
        self._plan_outputs: dict[str, int] = {}
        # One request in flight per worker: a reply answers the request before it.
        self._exchange_lock = threading.RLock()

    @abstractmethod
    def _roundtrip(self, data: bytes) -> bytes | bytearray:
        """Deliver one encoded request and return the encoded reply (the only transport hook)."""

    def new_id(self) -> str:
        """A fresh object id, unique for this client."""
        return f"{self._prefix}:{next(self._counter)}"

    # ------------------------------------------------------------ messaging

    def _request(self, msg: Request, expect: type[R]) -> R:
        return self._request_frame(msg.encode(), msg.TAG, expect)

    def _request_frame(self, data: bytes, tag: str, expect: type[R]) -> R:
        if self._closed:
            raise WorkerError(f"worker {self.id!r} is closed")
        if len(self._pending_deletes) >= self.delete_batch_size:
            self.delete(())  # garbage-collected pointers ride along in one batch
        return self._exchange_frame(data, tag, expect)

    def _exchange(self, msg: Request, expect: type[R]) -> R:
        return self._exchange_frame(msg.encode(), msg.TAG, expect)

    def _exchange_frame(self, data: bytes, tag: str, expect: type[R]) -> R:
        with self._exchange_lock:
            self.bytes_sent += len(data)
            self.messages_sent += 1
            self.message_counts[tag] += 1
            reply_bytes = self._roundtrip(data)
            self.bytes_received += len(reply_bytes)
        reply = decode_message(reply_bytes, in_place=self._replies_in_place)
        if isinstance(reply, ErrorReply):
            raise RemoteError(reply.code, reply.message)
        if not isinstance(reply, expect):
            raise ProtocolError(f"{reply.TAG!r} is no answer to {tag!r}")
        return reply

    def _wire(self, value: Any) -> Any:
        """Pointers → Refs (checking they live here); lists/tuples walked."""
        if isinstance(value, Pointer):
            return value._ref(self)
        if isinstance(value, list | tuple):
            return [self._wire(item) for item in value]
        return value

    def _id_of(self, item: Pointer | str) -> str:
        return item._ref(self).obj_id if isinstance(item, Pointer) else item

    # ------------------------------------------------------------ objects

    def send(
        self, value: Value, *, obj_id: str | None = None, owned: bool | None = None
    ) -> Pointer:
        if owned is None:
            owned = obj_id is None
        obj_id = self.new_id() if obj_id is None else obj_id
        self._request(PutObject(obj_id, value), Ack)
        if isinstance(value, torch.Tensor):
            shape, dtype = tuple(value.shape), _DTYPE_NAMES.get(value.dtype)
            return Pointer(self, obj_id, shape=shape, dtype=dtype, owned=owned)
        return Pointer(self, obj_id, owned=owned)

    def send_broadcast(self, broadcast: Broadcast) -> Pointer:
        """Store a value encoded once for many workers (same id on each); owned."""
        self._request_frame(broadcast.frame, PutObject.TAG, Ack)
        return Pointer(self, broadcast.obj_id, owned=True)

    def get(self, ptr_or_id: Pointer | str, *, delete: bool = True) -> Value:
        reply = self._request(GetObject(self._id_of(ptr_or_id), delete), ObjectReply)
        if delete and isinstance(ptr_or_id, Pointer):
            ptr_or_id._kill()
        return reply.value

    def delete(self, items: Iterable[Pointer | str]) -> int:
        items = list(items)
        ids = [self._id_of(item) for item in items]
        if self._closed:
            raise WorkerError(f"worker {self.id!r} is closed")
        with self._exchange_lock:  # two threads must not both take the pending ids
            pending = self._take_pending()
            try:
                ack = self._exchange(DeleteObjects(tuple(pending + ids)), Ack)
            except Exception:
                self._pending_deletes.extend(pending)  # keep them for the next attempt
                raise
        for item in items:
            if isinstance(item, Pointer):
                item._kill()
        return len(ack.obj_ids)

    # ------------------------------------------------------------ computation

    def run_op(self, op: str, *args: Any, **kwargs: Any) -> Pointer:
        wire_args = tuple(self._wire(arg) for arg in args)
        wire_kwargs = {key: self._wire(arg) for key, arg in kwargs.items()}
        reply = self._request(RunOp(op, wire_args, wire_kwargs, self.new_id()), OpReply)
        return Pointer(self, reply.result_id, shape=reply.shape, dtype=reply.dtype)

    def send_plan(self, plan: Plan, *, plan_id: str | None = None) -> PlanPointer:
        plan_id = self.new_id() if plan_id is None else plan_id
        self._request(SendPlan(plan_id, plan.to_dict()), Ack)
        self._plan_outputs[plan_id] = len(plan.outputs)
        return PlanPointer(self, plan_id, len(plan.outputs))

    def run_plan(self, plan: PlanPointer | str, *args: Pointer | str) -> list[Pointer]:
        if isinstance(plan, PlanPointer):
            if plan.worker is not self:
                raise WorkerError(f"plan {plan.plan_id!r} lives on {plan.worker.id!r}")
            plan_id, num_outputs = plan.plan_id, plan.num_outputs
        elif plan in self._plan_outputs:
            plan_id, num_outputs = plan, self._plan_outputs[plan]
        else:
            raise WorkerError(f"plan {plan!r} was not sent by this client")
        arg_ids = tuple(self._id_of(arg) for arg in args)
        result_ids = tuple(self.new_id() for _ in range(num_outputs))
        self._request(RunPlan(plan_id, arg_ids, result_ids), Ack)
        return [Pointer(self, result_id) for result_id in result_ids]

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
        msg = Train(
            model,
            self._id_of(state),
            self._id_of(x_id),
            self._id_of(y_id),
            dict(config.to_dict()),
            seed,
            self.new_id(),
            sealed,
        )
        reply = self._request(msg, TrainReply)
        return Pointer(self, reply.result_id), reply

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
        msg = Fit(
            model,
            self._id_of(state),
            self._id_of(x_id),
            self._id_of(y_id),
            dict(config.to_dict()),
            seed,
        )
        # Consumed on success; on a refusal the state may still be stored, and a
        # dead pointer would never free it: queue its id for the batched delete.
        state._kill()
        try:
            return self._request(msg, FitReply)
        except RemoteError:
            self._discard(msg.state_id)
            raise

    def evaluate(
        self,
        model: str,
        state: Pointer | str,
        *,
        x_id: Pointer | str = TRAIN_X_ID,
        y_id: Pointer | str = TRAIN_Y_ID,
        batch_size: int = 1000,
    ) -> EvalReply:
        msg = Evaluate(model, self._id_of(state), self._id_of(x_id), self._id_of(y_id), batch_size)
        return self._request(msg, EvalReply)

    def ping(self) -> Pong:
        return self._request(Ping(), Pong)

    def party_op(self, op: str, **args: Value) -> dict[str, Value]:
        return self._request(PartyOp(op, dict(args)), PartyReply).values
