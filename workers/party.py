"""A worker's party side: its vault of secrets and the registry of party steps.

Multi-party protocols (``mpc.protocols``) drive workers through one request,
:class:`~workers.messages.PartyOp`, naming a *party step*: a small function
that runs on the worker, reads and writes the worker's :class:`Party` state and
returns only what the protocol makes public — a public key, ciphertexts sealed
for another worker, a share of a sum. Secrets (shares, private keys, MAC key
shares) live in the party's vault, which ``GetObject`` cannot reach: a
coordinator that follows the protocol sees what it must, and one that does
not still cannot ask a worker for its shares.

This module knows no protocol: each protocol module registers its steps with
:func:`register_party_steps` when it is imported, and the worker runs nothing
else (as with the op allowlist in ``workers.ops``). A worker process imports
every protocol at start (``mpc.protocols.all_steps``); in one process, the
coordinator's driver imports its protocol's steps. Each step validates its
arguments with the ``arg_*`` helpers, so hostile input gets a ``bad_request``
reply and leaves the vault untouched.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from workers.codec import Value
from workers.cohort import MIN_COHORT
from workers.errors import WorkerError

if TYPE_CHECKING:
    from workers.contributions import Contribution, Contributions, Spending

__all__ = [
    "FORGET",
    "MAX_SECRETS",
    "Party",
    "PartyError",
    "PartyStep",
    "arg_bytes",
    "arg_id",
    "arg_int",
    "arg_list",
    "arg_str",
    "arg_tensor",
    "check_tensor",
    "party_steps",
    "register_party_steps",
    "session_arg",
    "tensor_from_bytes",
]

T = TypeVar("T")

# The one step every worker has: the coordinator's clean-up after a protocol run.
FORGET = "forget"

MAX_SECRETS = 4096  # vault entries per worker: a bound on what a coordinator can make it hold


class PartyError(WorkerError):
    """A party step refused its input (answered as ``bad_request``)."""


class Party:
    """The party state of one worker: a vault of secrets, lasting objects, its stored objects."""

    def __init__(
        self,
        worker_id: str,
        read_object: Callable[[str], Value],
        contributions: Contributions | None = None,
        *,
        min_cohort: int = MIN_COHORT,
        peer_secret: bytes | None = None,
        hold_object: Callable[[str, Value], None] | None = None,
        own_data: Callable[[str], bool] | None = None,
        held_object: Callable[[str], bool] | None = None,
    ) -> None:
        if min_cohort < MIN_COHORT:
            raise WorkerError(f"a minimum cohort below {MIN_COHORT} would reveal one update")
        self.worker_id = worker_id
        # The smallest sum this worker reveals a share of, whatever a coordinator
        # asks: the worker's own floor under the run's --min-cohort.
        self.min_cohort = min_cohort
        # Shared by the federation's workers, never by the coordinator: it vouches
        # for each session public key, so a coordinator relaying keys cannot
        # substitute its own (see peer_public).
        self.peer_secret = peer_secret
        self._lasting: dict[str, Any] = {}
        self._read_object = read_object
        self._hold_object = hold_object
        self._own_data = own_data
        self._held_object = held_object
        self._contributions = contributions
        self._vault: dict[str, Any] = {}
        # Sessions this party revealed a share of, or abandoned: never run again.
        self._ended: OrderedDict[str, str] = OrderedDict()

    def lasting(self, name: str, make: Callable[[], T]) -> T:
        """An object kept for this party's lifetime, not one session's secret (say a
        protocol's CSPRNG): made by ``make`` on first use.

        Lazily: a simulation materialises a worker per sampled client and most
        never run a party step, so nothing is made for them. Were two steps to
        race on first use, each would make one; the last is kept.
        """
        if name not in self._lasting:
            self._lasting[name] = make()
        return self._lasting[name]  # type: ignore[no-any-return]

    def read_object(self, obj_id: str) -> Value:
        """An object from the worker's store (its own data included), never a sealed one:
        those are reached by :meth:`take_contribution` only."""
        if self._contributions is not None and obj_id in self._contributions:
            raise PartyError(f"{obj_id!r} is sealed for secure aggregation")
        return self._read_object(obj_id)

    def is_own_data(self, obj_id: str) -> bool:
        """Whether ``obj_id`` is the worker's own data (its training or test set)."""
        return self._own_data is not None and self._own_data(obj_id)

    def was_revealed(self, obj_id: str) -> bool:
        """Whether ``obj_id`` is a value a protocol opened for this worker alone (:meth:`hold`)."""
        return self._held_object is not None and self._held_object(obj_id)

    def hold(self, obj_id: str, value: Value) -> None:
        """Store ``value`` in the worker's store as opened for it alone: other party
        steps can read it; the coordinator can free it but never fetch it."""
        if self._hold_object is None:
            raise PartyError(f"{self.worker_id!r} cannot hold revealed values")
        try:
            self._hold_object(obj_id, value)
        except WorkerError:
            raise
        except Exception as exc:  # the store's refusal (an id that exists, a bad id)
            raise PartyError(f"cannot hold {obj_id!r}: {exc}") from None

    def take_contribution(
        self, obj_id: str, spending: Spending
    ) -> tuple[dict[str, torch.Tensor], Contribution]:
        """A sealed trained state and what the worker vouches for about it, for
        ``spending.session`` alone: no other session can take it (``workers.contributions``)."""
        if self._contributions is None:
            raise PartyError(f"{self.worker_id!r} holds no sealed contributions")
        contribution = self._contributions.take(obj_id, spending)
        state = self._read_object(obj_id)
        assert isinstance(state, dict)
        return state, contribution

    def contribution(self, obj_id: str) -> Contribution:
        """What the worker vouches for about the sealed state ``obj_id`` (not consumed)."""
        if self._contributions is None:
            raise PartyError(f"{self.worker_id!r} holds no sealed contributions")
        return self._contributions.record(obj_id)

    def spending(self, obj_id: str) -> Spending | None:
        """The session that took the contribution ``obj_id``, if any."""
        return None if self._contributions is None else self._contributions.spending(obj_id)

    def release_contribution(self, obj_id: str) -> None:
        """Let ``obj_id`` be shared again: the session that took it can never open."""
        if self._contributions is not None:
            self._contributions.release(obj_id)

    def end_session(self, session: str, how: str) -> None:
        """Record that this party ``how`` ("revealed" or "abandoned") ``session``: it
        makes no key for it again, and an abandoned one is never revealed."""
        self._ended[session] = how
        while len(self._ended) > MAX_SECRETS:
            self._ended.popitem(last=False)

    def ended(self, session: str) -> str | None:
        """How this party ended ``session``, if it did."""
        return self._ended.get(session)

    def require_room(self, keys: int) -> None:
        """Fail now, before any write, if ``keys`` new secrets would not fit."""
        if len(self._vault) + keys > MAX_SECRETS:
            raise PartyError(f"vault of {self.worker_id!r} is full ({MAX_SECRETS} secrets)")

    def keep(self, key: str, value: Any) -> None:
        """Store a secret under ``key`` (replacing one of the same key)."""
        if key not in self._vault and len(self._vault) >= MAX_SECRETS:
            raise PartyError(f"vault of {self.worker_id!r} is full ({MAX_SECRETS} secrets)")
        self._vault[key] = value

    def secret(self, key: str) -> Any:
        try:
            return self._vault[key]
        except KeyError:
            raise PartyError(f"no secret {key!r} on {self.worker_id!r}") from None

    def has(self, key: str) -> bool:
        return key in self._vault

    def keys(self, prefix: str) -> list[str]:
        """Vault keys starting with ``prefix``."""
        return [key for key in self._vault if key.startswith(prefix)]

    def discard(self, key: str) -> bool:
        """Drop the secret ``key`` itself (not the keys it is a prefix of); whether it was held."""
        return self._vault.pop(key, _ABSENT) is not _ABSENT

    def forget(self, prefix: str) -> int:
        """Drop every secret whose key starts with ``prefix``; returns how many."""
        keys = [key for key in self._vault if key.startswith(prefix)]
        for key in keys:
            del self._vault[key]
        return len(keys)

    def secret_count(self) -> int:
        return len(self._vault)


_ABSENT = object()

PartyStep = Callable[[Party, Mapping[str, Value]], dict[str, Value]]

_STEPS: dict[str, PartyStep] = {}


def register_party_steps(steps: Mapping[str, PartyStep]) -> None:
    """Let workers of this process run ``steps`` (by name): called by each protocol
    module as it is imported. A name registered to another function is refused."""
    for name, step in steps.items():
        if _STEPS.get(name, step) is not step:
            raise WorkerError(f"party step {name!r} is registered twice")
    _STEPS.update(steps)


def party_steps() -> Mapping[str, PartyStep]:
    """Every registered party step by name (read-only)."""
    return MappingProxyType(_STEPS)


def session_arg(args: Mapping[str, Value]) -> str:
    """The ``session`` argument: the prefix of every vault key a protocol run uses."""
    session = arg_str(args, "session", max_length=128)
    if "/" in session:
        raise PartyError("a session name may not contain '/'")
    return session


def _forget(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Drop a session's secrets (the coordinator's clean-up after a protocol run)."""
    prefix = session_arg(args)
    return {"forgotten": party.forget(prefix + "/")}


register_party_steps({FORGET: _forget})


# ------------------------------------------------------------------ arguments


def _arg(args: Mapping[str, Value], name: str) -> Value:
    try:
        return args[name]
    except KeyError:
        raise PartyError(f"missing argument {name!r}") from None


def arg_str(args: Mapping[str, Value], name: str, *, max_length: int = 256) -> str:
    value = _arg(args, name)
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise PartyError(f"argument {name!r} must be a string of 1..{max_length} chars")
    return value


def arg_id(args: Mapping[str, Value], name: str) -> str:
    """A worker id: no '/' (vault keys use it) and no NUL (length-prefixed elsewhere, but
    an id is also shown in messages)."""
    value = arg_str(args, name)
    if "/" in value or "\x00" in value:
        raise PartyError(f"argument {name!r} may not contain '/' or NUL")
    return value


def arg_int(args: Mapping[str, Value], name: str, *, low: int, high: int) -> int:
    value = _arg(args, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PartyError(f"argument {name!r} must be an integer in [{low}, {high}], got {value!r}")
    return value


def arg_list(args: Mapping[str, Value], name: str, *, max_length: int = 4096) -> list[Value]:
    value = _arg(args, name)
    if not isinstance(value, list) or len(value) > max_length:
        raise PartyError(f"argument {name!r} must be a list of at most {max_length} items")
    return value


def arg_tensor(
    args: Mapping[str, Value], name: str, *, dtype: torch.dtype, ndim: int | None = None
) -> torch.Tensor:
    value = _arg(args, name)
    return check_tensor(value, name, dtype=dtype, ndim=ndim)


def check_tensor(
    value: Value, name: str, *, dtype: torch.dtype, ndim: int | None = None
) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dtype != dtype:
        raise PartyError(f"{name!r} must be a {dtype} tensor")
    if ndim is not None and value.ndim != ndim:
        raise PartyError(f"{name!r} must have {ndim} dimensions, got {value.ndim}")
    return value


def arg_bytes(args: Mapping[str, Value], name: str) -> bytes:
    """A byte string, sent as a 1-D uint8 tensor (the codec has no bytes type)."""
    return arg_tensor(args, name, dtype=torch.uint8, ndim=1).numpy().tobytes()


def tensor_from_bytes(data: bytes) -> torch.Tensor:
    """Bytes as a 1-D uint8 tensor, the form in which they cross the wire."""
    return (
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if data
        else torch.empty(0, dtype=torch.uint8)
    )
