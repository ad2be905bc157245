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

from dataclasses import dataclass, fields
from typing import ClassVar

from workers.codec import Value, decode_frame
from workers.errors import ProtocolError
from workers.message_base import Message, Reply, Request

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

# 2: PartyOp/PartyReply, Train.sealed; 3: Fit/FitReply; 4: AuthResult.max_message_bytes;
# 5: Pong.task (the task's fingerprint)
PROTOCOL_VERSION = 5


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
    # What training data the worker holds (see fl.partition.Partitioning.describe),
    # so a coordinator can refuse a worker started for another experiment.
    data: str = ""
    # The code and data of the task it loaded (fl.tasks.task_fingerprint), compared
    # with the coordinator's before round 1.
    task: str = ""


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
