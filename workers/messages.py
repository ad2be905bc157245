"""The typed messages of the worker protocol.

Every message is a frozen dataclass with a stable wire ``TAG``. ``encode()``
turns it into one codec frame whose value is the dict of its fields;
:func:`decode_message` looks the tag up, insists on exactly the declared fields,
and checks each against its annotation (so a wrongly typed field is a
ProtocolError at the boundary, not an AttributeError deep in a handler).

Requests travel coordinator → worker, replies worker → coordinator; any request
may be answered by :class:`ErrorReply` instead of its usual reply.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from workers.codec import Value, decode_frame, encode_frame, encode_frame_writable
from workers.errors import ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "Ack",
    "AuthChallenge",
    "AuthResponse",
    "AuthResult",
    "DeleteObjects",
    "ErrorReply",
    "EvalReply",
    "Evaluate",
    "Fit",
    "FitReply",
    "GetObject",
    "Message",
    "ObjectReply",
    "OpReply",
    "PartyOp",
    "PartyReply",
    "Ping",
    "Pong",
    "PutObject",
    "Reply",
    "Request",
    "RunOp",
    "RunPlan",
    "SendPlan",
    "Train",
    "TrainReply",
    "decode_message",
    "encode_message",
]

# 2: PartyOp/PartyReply, Train.sealed; 3: Fit/FitReply; 4: AuthResult.max_message_bytes
PROTOCOL_VERSION = 4


class Message:
    """Base of all messages: field validation on construction, encode/decode."""

    TAG: ClassVar[str]

    def __post_init__(self) -> None:
        # Normalize (lists → tuples, ints → floats) and type-check every field, so
        # a message built in code and one decoded from bytes look exactly alike.
        hints = _hints(type(self))
        for field in fields(self):  # type: ignore[arg-type]
            value = _coerce(hints[field.name], getattr(self, field.name), field.name)
            object.__setattr__(self, field.name, value)

    def encode(self, *, reserve: int = 0) -> bytes:
        """This message as one wire frame (``reserve``: see ``encode_frame``)."""
        return encode_frame(self.TAG, self._fields(), reserve=reserve)

    def encode_writable(self, *, over: bytearray | None = None) -> bytearray:
        """This message as one wire frame in a ``bytearray``, possibly written over
        the frame its tensors were decoded from (see ``encode_frame_writable``)."""
        return encode_frame_writable(self.TAG, self._fields(), over=over)

    def _fields(self) -> dict[str, Value]:
        return {field.name: getattr(self, field.name) for field in fields(self)}  # type: ignore[arg-type]

    @staticmethod
    def decode(data: bytes | bytearray | memoryview) -> Message:
        """The message in ``data``; see :func:`decode_message`."""
        return decode_message(data)


class Request(Message):
    """A message a worker answers."""


class Reply(Message):
    """A worker's answer to a request."""


# ------------------------------------------------------------------ requests


@dataclass(frozen=True)
class Ping(Request):
    """Health check; answered by :class:`Pong`."""

    TAG: ClassVar[str] = "ping"


@dataclass(frozen=True)
class PutObject(Request):
    """Store ``value`` under a new id chosen by the client; answered by :class:`Ack`."""

    TAG: ClassVar[str] = "put"
    obj_id: str
    value: Value


@dataclass(frozen=True)
class GetObject(Request):
    """Send an object back (and free it if ``delete``); answered by :class:`ObjectReply`."""

    TAG: ClassVar[str] = "get"
    obj_id: str
    delete: bool


@dataclass(frozen=True)
class DeleteObjects(Request):
    """Free many objects in one round trip; unknown ids are ignored (idempotent GC)."""

    TAG: ClassVar[str] = "delete"
    obj_ids: tuple[str, ...]


@dataclass(frozen=True)
class RunOp(Request):
    """Run allowlisted ``op`` on constants and :class:`~workers.codec.Ref` arguments.

    The tensor result stays on the worker under ``result_id``; answered by :class:`OpReply`.
    """

    TAG: ClassVar[str] = "run_op"
    op: str
    args: tuple[Value, ...]
    kwargs: dict[str, Value]
    result_id: str


@dataclass(frozen=True)
class SendPlan(Request):
    """Store a plan (``Plan.to_dict()`` data, validated on arrival); answered by :class:`Ack`."""

    TAG: ClassVar[str] = "send_plan"
    plan_id: str
    plan: dict[str, Value]


@dataclass(frozen=True)
class RunPlan(Request):
    """Run a stored plan on stored objects, keeping its outputs remote; answered by Ack."""

    TAG: ClassVar[str] = "run_plan"
    plan_id: str
    arg_ids: tuple[str, ...]
    result_ids: tuple[str, ...]


@dataclass(frozen=True)
class Train(Request):
    """Train ``model`` from the state under ``state_id`` on stored data; answered by TrainReply.

    ``config`` is ``TrainConfig.to_dict()``; ``seed`` seeds the local shuffling, so
    the same request trains the same weights on any worker. ``sealed`` keeps the
    result from the coordinator (see ``WorkerCore``).
    """

    TAG: ClassVar[str] = "train"
    model: str
    state_id: str
    x_id: str
    y_id: str
    config: dict[str, Value]
    seed: int
    result_id: str
    # Secure aggregation: the trained state may be read only by party steps (never
    # sent back, never an op's input); the coordinator can still free it.
    sealed: bool = False


@dataclass(frozen=True)
class Fit(Request):
    """Train ``model`` from the state under ``state_id`` and answer with the trained
    state itself, in :class:`FitReply`: Train and GetObject in one round trip.

    The worker *consumes* ``state_id``: its tensors become the training model's
    own (no copy) and the id is freed. A sealed state cannot be fitted — secure
    aggregation trains with ``Train(sealed=True)``, whose result never leaves.
    """

    TAG: ClassVar[str] = "fit"
    model: str
    state_id: str
    x_id: str
    y_id: str
    config: dict[str, Value]
    seed: int


@dataclass(frozen=True)
class Evaluate(Request):
    """Evaluate ``model`` with the stored state on stored data; answered by EvalReply."""

    TAG: ClassVar[str] = "evaluate"
    model: str
    state_id: str
    x_id: str
    y_id: str
    batch_size: int


@dataclass(frozen=True)
class PartyOp(Request):
    """Run the registered MPC party step ``op`` (``workers.party``); answered by PartyReply.

    Party steps work on the worker's *vault* — secret shares and keys that no
    other request can read — so shares never leave a worker except as the
    protocol step itself decides (encrypted for a peer, or a share of a sum).
    """

    TAG: ClassVar[str] = "party_op"
    op: str
    args: dict[str, Value]


# ------------------------------------------------------------------- replies


@dataclass(frozen=True)
class Pong(Reply):
    """Answer to Ping: who the worker is and how many objects it holds."""

    TAG: ClassVar[str] = "pong"
    worker_id: str
    version: int
    num_objects: int
    # What training data the worker holds (see fl.partition.partition_descriptor),
    # so a coordinator can refuse a worker started for another experiment.
    data: str = ""


@dataclass(frozen=True)
class Ack(Reply):
    """Success; ``obj_ids`` names the objects created (or, for deletion, freed)."""

    TAG: ClassVar[str] = "ack"
    obj_ids: tuple[str, ...]


@dataclass(frozen=True)
class ObjectReply(Reply):
    """The value asked for by GetObject."""

    TAG: ClassVar[str] = "object"
    value: Value


@dataclass(frozen=True)
class OpReply(Reply):
    """An op's result now lives under ``result_id``; its shape and dtype, for the pointer."""

    TAG: ClassVar[str] = "op_reply"
    result_id: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class TrainReply(Reply):
    """Local training done; the new state dict lives under ``result_id``."""

    TAG: ClassVar[str] = "train_reply"
    result_id: str
    num_samples: int
    steps: int
    mean_loss: float
    seconds: float


@dataclass(frozen=True)
class FitReply(Reply):
    """Local training done; ``state`` is the trained state dict."""

    TAG: ClassVar[str] = "fit_reply"
    state: dict[str, Value]
    num_samples: int
    steps: int
    mean_loss: float
    seconds: float


@dataclass(frozen=True)
class EvalReply(Reply):
    """Evaluation metrics computed on the worker's data."""

    TAG: ClassVar[str] = "eval_reply"
    loss: float
    accuracy: float
    num_samples: int


@dataclass(frozen=True)
class PartyReply(Reply):
    """Answer to PartyOp: the step's public outputs (ciphertexts, keys, shares of sums)."""

    TAG: ClassVar[str] = "party_reply"
    values: dict[str, Value]


@dataclass(frozen=True)
class ErrorReply(Reply):
    """The request failed; ``code`` is one of ``workers.core.ERROR_CODES``."""

    TAG: ClassVar[str] = "error"
    code: str
    message: str


# ------------------------------------------------------------ authentication
# The handshake a websocket worker runs before it obeys anyone (workers/auth.py):
# worker → AuthChallenge, coordinator → AuthResponse, worker → AuthResult.


@dataclass(frozen=True)
class AuthChallenge(Reply):
    """First frame a worker sends on a new connection: who it is and a fresh nonce."""

    TAG: ClassVar[str] = "auth_challenge"
    worker_id: str
    nonce: str  # hex
    version: int


@dataclass(frozen=True)
class AuthResponse(Request):
    """The coordinator's proof that it holds the shared secret (HMAC, hex)."""

    TAG: ClassVar[str] = "auth_response"
    client_nonce: str  # hex
    proof: str  # hex


@dataclass(frozen=True)
class AuthResult(Reply):
    """Accepted (with the worker's own proof, for mutual authentication) or refused."""

    TAG: ClassVar[str] = "auth_result"
    ok: bool
    proof: str  # hex; empty when refused
    reason: str
    # The largest frame the worker reads from this connection: the coordinator
    # refuses to send a larger one, which would close the connection.
    max_message_bytes: int


_MESSAGE_TYPES: tuple[type[Message], ...] = (
    Ping,
    PutObject,
    GetObject,
    DeleteObjects,
    RunOp,
    SendPlan,
    RunPlan,
    Train,
    Fit,
    Evaluate,
    PartyOp,
    Pong,
    Ack,
    ObjectReply,
    OpReply,
    TrainReply,
    FitReply,
    EvalReply,
    PartyReply,
    ErrorReply,
    AuthChallenge,
    AuthResponse,
    AuthResult,
)
_BY_TAG: dict[str, type[Message]] = {cls.TAG: cls for cls in _MESSAGE_TYPES}
assert len(_BY_TAG) == len(_MESSAGE_TYPES), "message tags must be unique"


_HINTS: dict[type[Message], dict[str, Any]] = {}


def _hints(cls: type[Message]) -> dict[str, Any]:
    """Resolved field annotations of ``cls`` (cached: resolving them is slow)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against a field annotation and return its normalized form."""
    if hint is Any:
        return value  # a wire Value: the codec checks it on encode and decode
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(_coerce(params[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict and isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ProtocolError(f"field {where!r} must have str keys")
        return {key: _coerce(params[1], item, f"{where}.{key}") for key, item in value.items()}
    if origin is types.UnionType:
        for option in params:
            try:
                return _coerce(option, value, where)
            except ProtocolError:
                pass
    if hint is type(None) and value is None:
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint in (int, float) and isinstance(value, int) and not isinstance(value, bool):
        # Every int field is an int64 on the way into torch; beyond that a float
        # overflows and a seed or count cannot be used.
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ProtocolError(f"field {where!r} is out of the int64 range")
        return hint(value)
    if hint is float and isinstance(value, float):
        return value
    if hint is str and isinstance(value, str):
        return value
    raise ProtocolError(f"field {where!r} must be {_name(hint)}, got {type(value).__name__}")


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def encode_message(msg: Message) -> bytes:
    """``msg`` as one wire frame."""
    return msg.encode()


def decode_message(data: bytes | bytearray | memoryview, *, in_place: bool = False) -> Message:
    """The message in ``data``; ProtocolError on unknown tags or missing/extra/bad fields.

    ``in_place``: the caller hands ``data`` over (see ``decode_frame``).
    """
    tag, body = decode_frame(data, in_place=in_place)
    cls = _BY_TAG.get(tag)
    if cls is None:
        raise ProtocolError(f"unknown message type {tag!r}")
    if not isinstance(body, dict):
        raise ProtocolError(f"{tag} body must be a map of fields")
    expected = {field.name for field in fields(cls)}  # type: ignore[arg-type]
    if set(body) != expected:
        missing, extra = sorted(expected - set(body)), sorted(set(body) - expected)
        raise ProtocolError(f"{tag}: missing fields {missing}, unexpected fields {extra}")
    try:
        return cls(**body)
    except (TypeError, ValueError, OverflowError) as exc:  # a field check of a message class
        raise ProtocolError(f"{tag}: {exc}") from None
