"""A worker's MPC side: its vault of secrets and the registry of party steps.

Multi-party protocols (``mpc.protocols``) drive workers through one request,
:class:`~workers.messages.PartyOp`, naming a *party step*: a small function
that runs on the worker, reads and writes the worker's :class:`Party` state and
returns only what the protocol makes public — a public key, ciphertexts sealed
for another worker, a share of a sum. Secrets (shares, private keys, MAC key
shares) live in the party's vault, which ``GetObject`` cannot reach: a
coordinator that follows the protocol sees what it must, and one that does
not still cannot ask a worker for its shares.

Steps are registered by name in modules listed in :func:`party_steps`; the
worker runs nothing else (as with the op allowlist in ``workers.ops``). Each
step validates its arguments with the ``arg_*`` helpers, so hostile input gets
a ``bad_request`` reply and leaves the vault untouched.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from mpc.channel import PUBLIC_KEY_BYTES, SessionKey, open_sealed, seal
from mpc.random import SecureRandom
from workers.codec import Value
from workers.errors import WorkerError

if TYPE_CHECKING:
    from workers.contributions import Contribution, Contributions, Spending

__all__ = [
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
    "open_from",
    "party_steps",
    "peer_public",
    "seal_for",
    "session_arg",
    "session_key",
    "tensor_from_bytes",
]

MAX_SECRETS = 4096  # vault entries per worker: a bound on what a coordinator can make it hold
MIN_COHORT = 2  # no sum of fewer contributions is ever revealed: it would be an update
SERVED_MIN_COHORT = 3  # `fedsim worker serve`'s floor unless its operator lowers it


def default_min_cohort(clients: int) -> int:
    """The minimum cohort of a run or round of ``clients``: 3, or every client if fewer."""
    return max(MIN_COHORT, min(SERVED_MIN_COHORT, clients))


class PartyError(WorkerError):
    """A party step refused its input (answered as ``bad_request``)."""


class Party:
    """The MPC state of one worker: a vault of secrets, a CSPRNG, its stored objects."""

    def __init__(
        self,
        worker_id: str,
        read_object: Callable[[str], Value],
        contributions: Contributions | None = None,
        *,
        min_cohort: int = MIN_COHORT,
        peer_secret: bytes | None = None,
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
        self._rng: SecureRandom | None = None
        self._read_object = read_object
        self._contributions = contributions
        self._vault: dict[str, Any] = {}
        # Sessions this party revealed a share of, or abandoned: never run again.
        self._ended: OrderedDict[str, str] = OrderedDict()

    @property
    def rng(self) -> SecureRandom:
        """This party's CSPRNG, keyed from the OS on first use.

        Lazily: a simulation materialises a worker per sampled client and most
        never run an MPC step, and keying a ChaCha20 stream would be a cost in
        every client's round (docs/scale.md, "Measured"). Were two steps to race
        on first use, each would key a stream of its own from the OS: still a CSPRNG.
        """
        if self._rng is None:
            self._rng = SecureRandom()
        return self._rng

    def read_object(self, obj_id: str) -> Value:
        """An object from the worker's store (its own data included), never a sealed one:
        those are reached by :meth:`take_contribution` only."""
        if self._contributions is not None and obj_id in self._contributions:
            raise PartyError(f"{obj_id!r} is sealed for secure aggregation")
        return self._read_object(obj_id)

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

    def forget(self, prefix: str) -> int:
        """Drop every secret whose key starts with ``prefix``; returns how many."""
        keys = [key for key in self._vault if key.startswith(prefix)]
        for key in keys:
            del self._vault[key]
        return len(keys)

    def secret_count(self) -> int:
        return len(self._vault)


PartyStep = Callable[[Party, Mapping[str, Value]], dict[str, Value]]


@functools.cache
def party_steps() -> Mapping[str, PartyStep]:
    """Every registered party step by name (imported lazily: the step modules use ``mpc``)."""
    from workers import he_steps, inference_steps, release, secagg_mac_steps, secagg_steps

    steps: dict[str, PartyStep] = {"forget": _forget, "keygen": _keygen}
    for module in (secagg_steps, secagg_mac_steps, inference_steps, he_steps, release):
        overlap = set(steps) & set(module.STEPS)
        assert not overlap, f"party steps registered twice: {overlap}"
        steps.update(module.STEPS)
    return steps


def session_arg(args: Mapping[str, Value]) -> str:
    """The ``session`` argument: the prefix of every vault key a protocol run uses."""
    session = arg_str(args, "session", max_length=128)
    if "/" in session:
        raise PartyError("a session name may not contain '/'")
    return session


def session_key(party: Party, session: str) -> SessionKey:
    """This party's X25519 key pair for ``session`` (made by the ``keygen`` step)."""
    key = party.secret(f"{session}/key")
    assert isinstance(key, SessionKey)
    return key


_TAG_LABEL = b"fedsim-session-key-v1"


def _key_tag(peer_secret: bytes, session: str, worker_id: str, public: bytes) -> bytes:
    """HMAC over a session public key and whose it is, under the workers' peer secret."""
    fields = [_TAG_LABEL, session.encode(), worker_id.encode(), public]
    message = b"".join(len(f).to_bytes(4, "big") + f for f in fields)
    return hmac.new(peer_secret, message, hashlib.sha256).digest()


def peer_public(party: Party, session: str, peer: str, value: Value) -> bytes:
    """``peer``'s session public key as relayed by the coordinator, checked if this
    party has a peer secret: the key must carry ``peer``'s tag for this session.

    Without a peer secret the key is taken as relayed: the coordinator is then
    trusted not to substitute keys (it could otherwise read what is sealed).
    """
    data = check_tensor(value, f"public key of {peer!r}", dtype=torch.uint8, ndim=1)
    raw = data.numpy().tobytes()
    public, tag = raw[:PUBLIC_KEY_BYTES], raw[PUBLIC_KEY_BYTES:]
    if party.peer_secret is not None and not hmac.compare_digest(
        tag, _key_tag(party.peer_secret, session, peer, public)
    ):
        raise PartyError(
            f"the public key given for {peer!r} is not vouched for by the workers' peer "
            "secret: refused (a substituted key would let the relay read the message)"
        )
    return public


def seal_for(
    party: Party,
    session: str,
    recipient: str,
    recipient_public: Value,
    payload: bytes,
    *,
    label: str,
    purpose: int = 0,
) -> bytes:
    """``payload`` sealed with this party's session key for ``recipient`` (``mpc.channel``)."""
    return seal(
        session_key(party, session),
        peer_public(party, session, recipient, recipient_public),
        payload,
        session=session,
        sender=party.worker_id,
        recipient=recipient,
        label=label,
        purpose=purpose,
    )


def open_from(
    party: Party,
    session: str,
    sender: str,
    sender_public: Value,
    ciphertext: bytes,
    *,
    label: str,
    purpose: int = 0,
) -> bytes:
    """A message ``sender`` sealed for this party; MPCError if altered or misdirected."""
    return open_sealed(
        session_key(party, session),
        peer_public(party, session, sender, sender_public),
        ciphertext,
        session=session,
        sender=sender,
        recipient=party.worker_id,
        label=label,
        purpose=purpose,
    )


def _keygen(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Make this party's X25519 key pair for the session and publish the public half,
    tagged under the peer secret if the worker has one."""
    session = session_arg(args)
    if party.has(f"{session}/key") or party.ended(session):
        raise PartyError(f"session {session!r} already has a key on {party.worker_id!r}")
    key = SessionKey.generate()
    party.keep(f"{session}/key", key)
    public = key.public_bytes
    if party.peer_secret is not None:
        public += _key_tag(party.peer_secret, session, party.worker_id, public)
    return {"public_key": tensor_from_bytes(public)}


def _forget(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Drop a session's secrets (the coordinator's clean-up after a protocol run)."""
    prefix = session_arg(args)
    return {"forgotten": party.forget(prefix + "/")}


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
