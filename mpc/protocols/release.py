"""Abandoning an aggregation session before its opening, and sharing again after it.

A committee member can be lost after the clients shared (its connection drops,
its host dies). The clients' states are then consumed (``workers.contributions``)
and the round could not be finished with the survivors. A coordinator must
not simply be allowed to share them again: if it only *pretended* the member
was lost, it could open both sums and subtract them.

So a surviving member that has not revealed its share of the sum abandons the
session for good — it drops its share, makes no key for that session again,
and never reveals it — and seals for each client a release over the session's
channel (authenticated: only that member could have made it, for that client
and session). With k-of-k additive sharing, the old sum needs every member's
share, so one member's abandonment makes it unopenable; a client that holds
such a release from a member of the committee its state was shared with may
share the state again in a new session. The MAC variant's sum likewise needs
every member's share; under HE the key holder is the one party that could
decrypt, so its abandonment (which drops the secret key) releases the clients.

Steps: ``aggregate.abandon`` (a member: the releases, one per client named);
clients check a release inside their share step (:func:`apply_release`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fl.errors import FedsimError
from mpc.channel import SessionKey, open_sealed
from mpc.protocols.base import ProtocolRun
from mpc.protocols.sessions import peer_public, seal_for, session_key
from workers.base import Worker
from workers.codec import Value
from workers.contributions import Spending
from workers.party import (
    Party,
    PartyError,
    arg_bytes,
    arg_id,
    arg_list,
    arg_str,
    register_party_steps,
    session_arg,
    tensor_from_bytes,
)

__all__ = [
    "ABANDON",
    "Release",
    "abandon_session",
    "apply_release",
    "release_args",
    "spending_for",
]

ABANDON = "aggregate.abandon"
_LABEL = "aggregate/release"
_PROMISE = b"this member abandoned the session and never reveals its share"


def _abandon(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Member: give up the session (never revealed) and release each client named.

    args: session, clients (ids), client_public_keys (their session keys, same
    order). Refused once this member revealed its share of the session's sum.
    """
    session = session_arg(args)
    # Every reveal step (secagg, MAC, HE) records its session as revealed.
    if party.ended(session) == "revealed":
        raise PartyError(f"session {session!r} was revealed: it cannot be abandoned")
    clients = [arg_id({"id": c}, "id") for c in arg_list(args, "clients", max_length=1 << 20)]
    keys = arg_list(args, "client_public_keys", max_length=1 << 20)
    if len(keys) != len(clients):
        raise PartyError("need one public key per client")
    tokens = [
        tensor_from_bytes(seal_for(party, session, client, public, _PROMISE, label=_LABEL))
        for client, public in zip(clients, keys, strict=True)
    ]
    party.forget(f"{session}/")
    party.end_session(session, "abandoned")
    return {"releases": tokens}


def apply_release(party: Party, args: Mapping[str, Value], state_id: str) -> None:
    """If the request carries a ``release`` for the session that took ``state_id``,
    check it and give the state back to be shared again; else nothing.

    ``release``: {session, member, token} — ``member`` must have been on the
    committee the state was shared with, and ``token`` its sealed promise.
    """
    release = args.get("release")
    if release is None:
        return
    if not isinstance(release, dict):
        raise PartyError("argument 'release' must be a map")
    session, member = arg_str(release, "session"), arg_id(release, "member")
    spending = party.spending(state_id)
    if spending is None or spending.session != session:
        raise PartyError(f"{state_id!r} was not shared in session {session!r}: nothing to release")
    public = spending.releasers.get(member)
    if public is None:
        raise PartyError(f"{member!r} was not on the committee of session {session!r}")
    if not isinstance(spending.key, SessionKey):
        raise PartyError(f"no key of session {session!r} to check a release with")
    promise = open_sealed(
        spending.key,
        public,
        arg_bytes(release, "token"),
        session=session,
        sender=member,
        recipient=party.worker_id,
        label=_LABEL,
    )
    if promise != _PROMISE:
        raise PartyError(f"the release from {member!r} is not a promise to abandon {session!r}")
    party.release_contribution(state_id)


def spending_for(party: Party, session: str, members: list[str], keys: list[Value]) -> Spending:
    """What a share step records of where a state went: the session, the members
    that could release it and this party's key to check their releases."""
    releasers = {m: peer_public(party, session, m, k) for m, k in zip(members, keys, strict=True)}
    return Spending(session, releasers, session_key(party, session))


# ------------------------------------------------------------------ coordinator


@dataclass(frozen=True)
class Release:
    """A committee member's sealed promise that ``session`` is never opened: the client
    it is for may share its state again (``mpc.protocols.release``)."""

    session: str
    member: str
    token: torch.Tensor

    def arg(self) -> dict[str, object]:
        return {"session": self.session, "member": self.member, "token": self.token}


def release_args(run: ProtocolRun, client: Worker) -> dict[str, object]:
    """The ``release`` argument for ``client``'s share step, if an abandoned session took
    its state (``run.state["releases"]``, by client id)."""
    release = run.state["releases"].get(client.id)
    return {} if release is None else {"release": release.arg()}


def abandon_session(run: ProtocolRun, role: str = "committee") -> None:
    """The run failed before its opening: the first worker of ``role`` (a committee
    member; HE's key holder) that answers abandons the session and releases every
    client that shared in it, so that the round can be run again over the
    survivors (``mpc.protocols.base.Protocol.abandon``)."""
    shared = [c for c in run.workers("clients") if c.id in run.state.get("shared", set())]
    if not shared:
        return
    for member in run.workers(role):
        if member.closed:
            continue
        try:
            tokens = member.party_op(
                ABANDON,
                session=run.session,
                clients=[c.id for c in shared],
                client_public_keys=[run.public_key(c) for c in shared],
            )["releases"]
        except FedsimError:
            continue  # lost too: another member will do
        assert isinstance(tokens, list)
        for client, token in zip(shared, tokens, strict=True):
            run.state["releases"][client.id] = Release(run.session, member.id, token)
        return


register_party_steps({ABANDON: _abandon})
