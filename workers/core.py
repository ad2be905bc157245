"""The sans-I/O worker: an object store plus a handler per request type.

:class:`WorkerCore` knows nothing about sockets or processes. A transport hands
it bytes and sends back the bytes it returns (:meth:`WorkerCore.handle_bytes`),
so the in-process :class:`~workers.virtual.VirtualWorker` and a websocket server
are both thin adapters over this one class and behave identically.

Failure policy: ``handle_bytes`` and ``handle`` never raise. Every failure —
undecodable bytes, unknown objects, a torch exception inside an op, a bad train
config — becomes an :class:`~workers.messages.ErrorReply` whose ``code`` is one
of :data:`ERROR_CODES`. Handlers validate and compute before they touch the
store, so a failed request leaves every stored object in place. (One
exception, by design: ``Fit`` trains the state it is handed in place, so a Fit
that fails *during* training has consumed it; every check runs before that.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from fl.attacks import flip_labels
from fl.errors import FedsimError
from fl.partition import Partitioning
from fl.task_data import PartitionSource, partition_source
from workers.codec import DTYPES, Ref, Value, check_value
from workers.cohort import MIN_COHORT
from workers.contributions import Contribution, Contributions
from workers.errors import ProtocolError, WorkerError
from workers.failures import ERROR_CODES, RequestFailure
from workers.messages import (
    PROTOCOL_VERSION,
    Ack,
    DeleteObjects,
    ErrorReply,
    Evaluate,
    Fit,
    FitReply,
    GetObject,
    Message,
    ObjectReply,
    OpReply,
    PartyOp,
    PartyReply,
    Ping,
    Pong,
    PutObject,
    Reply,
    RunOp,
    RunPlan,
    SendPlan,
    Train,
    decode_message,
)
from workers.model_pool import ModelPool
from workers.ops import OPS, apply_op
from workers.party import Party, party_steps
from workers.plan import Plan
from workers.training_requests import TrainingRequests

__all__ = [
    "ERROR_CODES",
    "MAX_ID_LENGTH",
    "TRAIN_X_ID",
    "TRAIN_Y_ID",
    "WorkerCore",
]

# Where a worker that loads its own partition keeps it (level 3 and 5): the
# coordinator refers to the data by these ids and never sees the tensors.
TRAIN_X_ID = "data/train/x"
TRAIN_Y_ID = "data/train/y"
MAX_ID_LENGTH = 256

_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_MISSING = object()


class WorkerCore(TrainingRequests):
    """Object store and request handlers of one worker (training: ``workers.training_requests``)."""

    def __init__(
        self,
        worker_id: str,
        *,
        objects: Mapping[str, object] | None = None,
        data_description: str = "",
        task_fingerprint: str = "",
        private: frozenset[str] = frozenset(),
        models: ModelPool | None = None,
        min_cohort: int = MIN_COHORT,
        peer_secret: bytes | None = None,
    ) -> None:
        self._worker_id = worker_id
        self.data_description = data_description
        self.task_fingerprint = task_fingerprint
        # The worker's own data: usable by Train and Evaluate only — never sent
        # back, deleted, or fed to an op whose result the coordinator could fetch.
        self._private = private
        # Values a protocol opened for this worker alone (a shared tensor revealed
        # to it): party steps may use them; the coordinator may free, never read them.
        self._held: set[str] = set()
        # Results of sealed training (secure aggregation): one party step may take
        # each, once; the coordinator may free them but never read or compute on them.
        self._contributions = Contributions()
        self._objects: dict[str, Value] = {}
        # The request frame each state dict stored by PutObject was decoded in
        # place from, by id: a Fit of that state answers in the same buffer.
        self._frames: dict[str, bytearray] = {}
        self._plans: dict[str, Plan] = {}
        # Modules are borrowed per request; virtual workers of one run share a pool.
        self._models = models if models is not None else ModelPool()
        for obj_id, value in (objects or {}).items():
            try:
                self._new_id(obj_id)
                check_value(value)
            except (RequestFailure, ProtocolError) as exc:
                raise WorkerError(f"initial object {obj_id!r}: {exc}") from None
            self._objects[obj_id] = value
        self._handlers: dict[type[Message], Callable[[Any], Reply]] = {
            Ping: self._ping,
            PutObject: self._put,
            GetObject: self._get,
            DeleteObjects: self._delete,
            RunOp: self._run_op,
            SendPlan: self._send_plan,
            RunPlan: self._run_plan,
            Train: self._train,
            Fit: self._fit,
            Evaluate: self._evaluate,
            PartyOp: self._party_op,
        }
        self._party = Party(
            worker_id,
            self._lookup,
            self._contributions,
            min_cohort=min_cohort,
            peer_secret=peer_secret,
            hold_object=self._hold,
            own_data=self._private.__contains__,
            held_object=self._held.__contains__,
        )

    @classmethod
    def with_partition(
        cls,
        worker_id: str,
        partitioning: Partitioning,
        index: int,
        *,
        data_dir: str | Path | None,
        label_flip: bool = False,
        models: ModelPool | None = None,
        source: PartitionSource | None = None,
    ) -> WorkerCore:
        """A worker holding its own training partition under TRAIN_X_ID / TRAIN_Y_ID.

        This is level 3's "decentralized" set-up: the worker loads the data
        itself, so training data never passes through the coordinator. The
        partition equals what a coordinator would compute with the same arguments.
        ``label_flip`` simulates a data-poisoning client (``fl.attacks``);
        ``models`` is the pool its modules are borrowed from (default: its own);
        ``source``, the same arguments' :func:`~fl.data.partition_source`, already resolved.
        """
        if source is None:
            source = partition_source(partitioning, data_dir=data_dir)
        if len(source.parts) != partitioning.count:
            raise WorkerError(
                f"partition source has {len(source.parts)} parts, expected {partitioning.count}"
            )
        split = source.part(index)
        if label_flip:  # over the task's classes, read off the whole training split
            split = flip_labels(split, num_classes=int(source.split.y.max()) + 1)
        description = partitioning.describe(index)
        return cls(
            worker_id,
            objects={TRAIN_X_ID: split.x, TRAIN_Y_ID: split.y},
            data_description=description,
            private=frozenset({TRAIN_X_ID, TRAIN_Y_ID}),
            models=models,
        )

    @property
    def worker_id(self) -> str:
        return self._worker_id

    def seal_contribution(
        self, obj_id: str, state: Mapping[str, torch.Tensor], samples: int, digest: bytes
    ) -> None:
        """Store ``state`` as a sealed result of this worker's own training, in process.

        For code that embeds a worker and trains it by other means (the
        aggregation tests do); over the wire only ``Train(sealed=True)`` makes one.
        """
        self._objects[self._new_id(obj_id)] = dict(state)
        self._contributions.add(obj_id, Contribution(samples, digest))

    def object_ids(self) -> list[str]:
        """Ids of the stored objects, in insertion order."""
        return list(self._objects)

    def plan_ids(self) -> list[str]:
        """Ids of the stored plans."""
        return list(self._plans)

    # ------------------------------------------------------------- entry points

    def handle_bytes(self, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        """Decode a request, handle it, encode the reply. Never raises.

        The request is copied once into a private buffer and its tensors are
        views of it (the copy a decoder makes anyway, in one piece). A stored
        state trained in place by ``Fit`` is then still the body of that buffer,
        so the ``FitReply`` is written over it: the trained model leaves without
        being copied again. The reply is always a fresh ``bytearray`` that
        nothing here writes again, so the transport may decode it in place.
        """
        frame = bytearray(data)
        over = None
        try:
            msg = decode_message(frame, in_place=True)
        except ProtocolError as exc:
            reply: Reply = ErrorReply("protocol", str(exc))
        except Exception as exc:  # e.g. MemoryError on a huge frame: still an answer
            reply = ErrorReply("protocol", f"cannot decode: {type(exc).__name__}")
        else:
            if isinstance(msg, Fit):
                over = self._frames.get(msg.state_id)
            reply = self.handle(msg)
            if isinstance(msg, PutObject) and isinstance(reply, Ack):
                if isinstance(msg.value, dict):
                    self._frames[msg.obj_id] = frame
            elif self._frames:  # forget the frames of states freed or consumed
                self._frames = {k: f for k, f in self._frames.items() if k in self._objects}
        try:
            return reply.encode_writable(over=over if isinstance(reply, FitReply) else None)
        except Exception as exc:
            return ErrorReply("internal", f"cannot encode reply: {type(exc).__name__}").encode()

    def handle(self, msg: Message) -> Reply:
        """The reply to one request message. Never raises."""
        handler = self._handlers.get(type(msg))
        if handler is None:
            return ErrorReply("bad_request", f"{msg.TAG!r} is not a request")
        try:
            return handler(msg)
        except RequestFailure as failure:
            return ErrorReply(failure.code, failure.message)
        except Exception as exc:
            return ErrorReply("internal", f"{type(exc).__name__}: {exc}")

    # --------------------------------------------------------------- the store

    def _new_id(self, obj_id: str) -> str:
        if not isinstance(obj_id, str) or not 0 < len(obj_id) <= MAX_ID_LENGTH:
            raise RequestFailure("bad_request", f"object id must be 1..{MAX_ID_LENGTH} chars")
        if obj_id in self._objects or obj_id in self._plans:
            raise RequestFailure("exists", f"id {obj_id!r} already exists on {self._worker_id!r}")
        return obj_id

    def _public(self, obj_id: str) -> Value:
        """An object the coordinator may read, delete or compute on."""
        if obj_id in self._private:
            raise RequestFailure(
                "bad_request", f"{obj_id!r} is the worker's own data: train/evaluate only"
            )
        if obj_id in self._contributions:
            raise RequestFailure(
                "bad_request", f"{obj_id!r} is sealed for secure aggregation: party steps only"
            )
        self._refuse_held(obj_id)
        return self._lookup(obj_id)

    def _hold(self, obj_id: str, value: Value) -> None:
        """Store a value opened for this worker alone (see ``_held``)."""
        self._objects[self._new_id(obj_id)] = value
        self._held.add(obj_id)

    def _lookup(self, obj_id: str) -> Value:
        try:
            return self._objects[obj_id]
        except KeyError:
            raise RequestFailure(
                "not_found", f"no object {obj_id!r} on {self._worker_id!r}"
            ) from None

    def _tensor(self, obj_id: str, what: str) -> torch.Tensor:
        self._refuse_held(obj_id)  # a model trained on it could be queried for it
        value = self._lookup(obj_id)
        if not isinstance(value, torch.Tensor):
            raise RequestFailure("bad_request", f"{what} {obj_id!r} is not a tensor")
        return value

    def _resolve(self, value: Value) -> Value:
        """Replace Refs (possibly inside lists) by the stored objects."""
        if isinstance(value, Ref):
            return self._public(value.obj_id)
        if isinstance(value, list):
            return [self._resolve(item) for item in value]
        return value

    def _check_result(self, value: Any, what: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise RequestFailure(
                "op_failed", f"{what} returned a {type(value).__name__}, not a tensor"
            )
        if value.dtype not in _DTYPE_NAMES:
            raise RequestFailure("op_failed", f"{what} returned dtype {value.dtype}")
        return value

    # --------------------------------------------------------------- handlers

    def _ping(self, msg: Ping) -> Pong:
        count, data, task = len(self._objects), self.data_description, self.task_fingerprint
        return Pong(self._worker_id, PROTOCOL_VERSION, count, data, task)

    def _put(self, msg: PutObject) -> Ack:
        self._objects[self._new_id(msg.obj_id)] = msg.value
        return Ack((msg.obj_id,))

    def _get(self, msg: GetObject) -> ObjectReply:
        value = self._public(msg.obj_id)
        if msg.delete:
            del self._objects[msg.obj_id]
        return ObjectReply(value)

    def _delete(self, msg: DeleteObjects) -> Ack:
        freed = []
        for obj_id in msg.obj_ids:
            if obj_id in self._private:
                continue  # never freed by the coordinator
            store = self._objects if obj_id in self._objects else self._plans
            if store.pop(obj_id, _MISSING) is not _MISSING:
                freed.append(obj_id)
                self._contributions.discard(obj_id)
                self._held.discard(obj_id)
        return Ack(tuple(freed))

    def _run_op(self, msg: RunOp) -> OpReply:
        self._new_id(msg.result_id)
        if msg.op not in OPS:
            raise RequestFailure("bad_request", f"op {msg.op!r} is not allowlisted")
        args = tuple(self._resolve(arg) for arg in msg.args)
        kwargs = {key: self._resolve(arg) for key, arg in msg.kwargs.items()}
        try:
            result = apply_op(msg.op, args, kwargs)
        except Exception as exc:
            raise RequestFailure("op_failed", f"{msg.op}: {type(exc).__name__}: {exc}") from None
        tensor = self._check_result(result, f"op {msg.op!r}")
        self._objects[msg.result_id] = tensor
        return OpReply(msg.result_id, tuple(tensor.shape), _DTYPE_NAMES[tensor.dtype])

    def _send_plan(self, msg: SendPlan) -> Ack:
        self._new_id(msg.plan_id)
        try:
            plan = Plan.from_dict(msg.plan)
        except WorkerError as exc:
            raise RequestFailure("bad_request", f"plan {msg.plan_id!r} refused: {exc}") from None
        self._plans[msg.plan_id] = plan
        return Ack((msg.plan_id,))

    def _run_plan(self, msg: RunPlan) -> Ack:
        plan = self._plans.get(msg.plan_id)
        if plan is None:
            raise RequestFailure("not_found", f"no plan {msg.plan_id!r} on {self._worker_id!r}")
        if len(msg.result_ids) != len(plan.outputs):
            raise RequestFailure(
                "bad_request",
                f"plan has {len(plan.outputs)} outputs, got {len(msg.result_ids)} ids",
            )
        if len(set(msg.result_ids)) != len(msg.result_ids):
            raise RequestFailure("bad_request", "result ids must be distinct")
        for result_id in msg.result_ids:
            self._new_id(result_id)
        inputs = [self._public(arg_id) for arg_id in msg.arg_ids]
        try:
            outputs = plan.run(inputs)
        except Exception as exc:
            raise RequestFailure(
                "op_failed", f"plan {msg.plan_id!r}: {type(exc).__name__}: {exc}"
            ) from None
        checked = [self._check_result(out, f"plan {msg.plan_id!r}") for out in outputs]
        self._objects.update(zip(msg.result_ids, checked, strict=True))
        return Ack(msg.result_ids)

    def _party_op(self, msg: PartyOp) -> PartyReply:
        step = party_steps().get(msg.op)
        if step is None:
            raise RequestFailure("bad_request", f"party step {msg.op!r} is not registered")
        try:
            values = step(self._party, msg.args)
        except RequestFailure:
            raise
        except FedsimError as exc:  # a step's deliberate refusal (PartyError, MPCError...)
            raise RequestFailure("bad_request", f"{msg.op}: {exc}") from None
        except Exception as exc:
            raise RequestFailure("op_failed", f"{msg.op}: {type(exc).__name__}: {exc}") from None
        return PartyReply(values)
