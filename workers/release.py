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

from mpc.channel import open_sealed
from workers.codec import Value
from workers.contributions import Spending
from workers.party import (
    Party,
    PartyError,
    PartyStep,
    arg_bytes,
    arg_id,
    arg_list,
    arg_str,
    peer_public,
    seal_for,
    session_arg,
    session_key,
    tensor_from_bytes,
)

__all__ = ["STEPS", "apply_release", "spending_for"]

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
    if spending.key is None:
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


STEPS: dict[str, PartyStep] = {"aggregate.abandon": _abandon}
