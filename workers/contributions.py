"""A worker's sealed contributions: trained states that may go into one aggregate, once.

Secure and homomorphic aggregation reveal a sum of client updates to the
coordinator. A coordinator that cheats can try to learn one update from sums:
open two sessions over overlapping client sets and subtract them, or inflate
one client's weight until the sum is that client's update. The worker defends
itself here, whatever the coordinator asks:

- a contribution is **consumed** by the first session that shares or encrypts
  it; another session over it is refused (``ContributionError`` naming the
  session it went into), so no two sums ever hold the same update;
- its **weight is the worker's own**: the number of samples it trained on, or 1
  when the round is unweighted; the coordinator only chooses between the two
  rules, and the committee checks that every contributor used the same one;
- it carries a **digest of what it was trained from** (model, training
  settings, initial state): the committee checks that every contributor
  trained the same model the same way, so the coordinator cannot make the
  other clients' results predictable (say, a learning rate of 0 for them) and
  subtract them from the sum.

A session that is abandoned before its sum is opened (a committee member was
lost) gives its contributions back only against a release: a member's promise,
sealed for the client over the session's channel, that it never revealed and
never will reveal its share of that sum (``mpc.protocols.release``); with k-of-k
sharing, one such member makes the old sum unopenable, so sharing the state
again in a new session gives away nothing.

The state itself sits in the worker's object store, unreadable by the
coordinator (``WorkerCore``), until the coordinator frees it; the record of
the session that took it outlives it, so a replay names that session.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from workers.party import PartyError

__all__ = [
    "DIGEST_BYTES",
    "WEIGHTINGS",
    "Contribution",
    "ContributionError",
    "Contributions",
    "Spending",
    "training_digest",
]

DIGEST_BYTES = 32
WEIGHTINGS = ("samples", "uniform")
_MAX_SPENT = 4096  # consumed ids remembered once their states are freed, oldest first


class ContributionError(PartyError):
    """A request would use a contribution twice, or with a weight not its own."""


@dataclass
class Contribution:
    """What the worker vouches for about one sealed trained state (kept in its store)."""

    samples: int  # the training examples behind it: the "samples" weight
    digest: bytes  # training_digest() of the request that trained it

    def weight(self, weighting: object) -> int:
        """The weight this worker contributes with under ``weighting`` (never the coordinator's)."""
        if weighting == "samples":
            return self.samples
        if weighting == "uniform":
            return 1
        raise ContributionError(
            f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}"
        )


@dataclass(frozen=True)
class Spending:
    """The session a contribution went into, and what checks a release from it."""

    session: str
    # Session public keys of the members that could release it, by id (as checked
    # when the shares were sealed for them).
    releasers: Mapping[str, bytes] = field(default_factory=dict)
    # This worker's key of that session (an ``mpc.channel.SessionKey``, opaque here):
    # the release step opens with it after the session's own secrets are forgotten.
    key: object | None = None


def training_digest(
    model: str, config: Mapping[str, object], initial: Mapping[str, torch.Tensor]
) -> bytes:
    """SHA-256 over the model name, the training settings and the initial state's tensors.

    The shuffling seed is left out: it differs per client by design and does
    not make a client's result predictable without its data.
    """
    h = hashlib.sha256(b"fedsim training v1\x00")
    h.update(json.dumps([model, dict(config)], sort_keys=True, default=str).encode())
    for key in sorted(initial):
        tensor = initial[key].detach().contiguous()
        h.update(f"\x00{key}\x00{tensor.dtype}\x00{tuple(tensor.shape)}\x00".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


class Contributions:
    """What one worker vouches for about its sealed states, by object id, and the ids consumed."""

    def __init__(self) -> None:
        self._live: dict[str, Contribution] = {}
        self._spent: OrderedDict[str, Spending] = OrderedDict()  # id -> where it went

    def add(self, obj_id: str, contribution: Contribution) -> None:
        self._live[obj_id] = contribution
        self._spent.pop(obj_id, None)

    def __contains__(self, obj_id: object) -> bool:
        return obj_id in self._live

    def discard(self, obj_id: str) -> None:
        """The coordinator freed the id (the round is over, or the state is no longer wanted)."""
        self._live.pop(obj_id, None)

    def take(self, obj_id: str, spending: Spending) -> Contribution:
        """The contribution ``obj_id`` for ``spending.session``: no other session gets it
        unless that one is released (:meth:`release`)."""
        spent = self._spent.get(obj_id)
        if spent is not None:
            raise ContributionError(
                f"{obj_id!r} was already shared in session {spent.session!r}: a trained state "
                "goes into one aggregate only"
            )
        contribution = self._live.get(obj_id)
        if contribution is None:
            raise ContributionError(f"no sealed contribution {obj_id!r} on this worker")
        self._forget_freed()
        if len(self._spent) >= _MAX_SPENT:
            # Never forget that a state still held was consumed: it could be shared again.
            raise ContributionError(
                f"{len(self._spent)} consumed states are still held: free some before sharing more"
            )
        self._spent[obj_id] = spending
        return contribution

    def _forget_freed(self) -> None:
        """Drop the oldest records of consumed states that were freed, past the bound."""
        if len(self._spent) < _MAX_SPENT:
            return
        for old in [i for i in self._spent if i not in self._live]:
            if len(self._spent) < _MAX_SPENT:
                break
            del self._spent[old]

    def record(self, obj_id: str) -> Contribution:
        """What the worker vouches for about ``obj_id``, without consuming it."""
        contribution = self._live.get(obj_id)
        if contribution is None:
            raise ContributionError(f"no sealed contribution {obj_id!r} on this worker")
        return contribution

    def spending(self, obj_id: str) -> Spending | None:
        """Where ``obj_id`` went, if a session took it."""
        return self._spent.get(obj_id)

    def release(self, obj_id: str) -> None:
        """Give ``obj_id`` back to be shared again: its session can never be opened."""
        if obj_id in self._live:
            self._spent.pop(obj_id, None)
