"""A cheating coordinator replays and reorders party messages of secure aggregation."""

from __future__ import annotations

import secrets

import pytest
import torch

from mpc.flatten import float_keys
from tests.adversary.cheating_coordinator import Trained, data_holders, flat, train_round
from workers.base import Worker
from workers.errors import RemoteError


def _share(session: str, client: Trained, committee: list[Worker], publics: dict) -> list:
    return client.worker.party_op(
        "secagg.share",
        session=session,
        state_id=client.state_id,
        weighting="samples",
        keys=float_keys(client.truth),
        clients=3,
        committee=[m.id for m in committee],
        public_keys=[publics[m.id] for m in committee],
        lead=0,
        fractional_bits=16,
    )["ciphertexts"]


def test_replayed_and_reordered_shares_are_refused() -> None:
    # Prepare: three clients (also the committee), two sessions with keys.
    template, trained = train_round(data_holders(3))
    committee = [t.worker for t in trained]
    member = committee[1]
    first, second = (f"attack-{secrets.token_hex(4)}" for _ in range(2))
    publics = {
        s: {w.id: w.party_op("keygen", session=s)["public_key"] for w in committee}
        for s in (first, second)
    }
    length = len(flat(template, template)) + 1
    sealed = [_share(first, client, committee, publics[first]) for client in trained]

    def accept(session: str, client: int) -> None:
        member.party_op(
            "secagg.accept",
            session=session,
            sender=trained[client].worker.id,
            sender_public_key=publics[session][trained[client].worker.id],
            ciphertext=sealed[client][1],
            length=length,
        )

    reveal = {"contributors": [t.worker.id for t in trained], "min_cohort": 3}
    kept = member.send(torch.arange(4.0))  # an object of the coordinator's on the member

    # Execute / Assert: a share sealed for one session does not open in another;
    # a reveal before the shares, a share counted twice, a reveal over other
    # contributors than those summed, and anything after the reveal are refused,
    # each with the rule it breaks.
    with pytest.raises(RemoteError, match="failed authentication"):
        accept(second, 0)
    with pytest.raises(RemoteError, match="minimum cohort is 3"):
        member.party_op("secagg.reveal", session=first, **reveal)
    accept(first, 0)
    with pytest.raises(RemoteError, match="already counted"):
        accept(first, 0)
    accept(first, 1)
    accept(first, 2)
    with pytest.raises(RemoteError, match="not the 3 this member summed"):
        member.party_op(
            "secagg.reveal", session=first, **{**reveal, "contributors": ["c0", "c1", "c9"]}
        )
    assert member.party_op("secagg.reveal", session=first, **reveal)["count"] == 3
    with pytest.raises(RemoteError, match="closed"):
        accept(first, 0)
    with pytest.raises(RemoteError, match="closed"):
        member.party_op("secagg.reveal", session=first, **reveal)
    with pytest.raises(RemoteError, match="was revealed: it cannot be abandoned"):
        member.party_op("aggregate.abandon", session=first, clients=[], client_public_keys=[])
    # The worker serves on and keeps its other objects.
    assert member.ping().worker_id == member.id
    assert torch.equal(kept.get(), torch.arange(4.0))
