"""Randomness a peer must not predict: were the seeds of the shares drawn from a seeded,
non-cryptographic generator (torch's, Python's, NumPy's), a committee member that
knows the seed would compute the other members' shares and so the client's update."""

from __future__ import annotations

import random

import numpy as np
import torch

from mpc.channel import open_sealed
from tests.mpc.secure_inputs import sealed_input
from workers.virtual import VirtualWorker


def _seed_member_0_receives() -> bytes:
    """One client shares for a committee of two; member 0 opens its share: a seed."""
    client, members = VirtualWorker("c"), [VirtualWorker("m0"), VirtualWorker("m1")]
    state_id = sealed_input(client, {"w": torch.ones(8)}, 2).state_id
    public = {w.id: w.party_op("keygen", session="s")["public_key"] for w in (client, *members)}
    reply = client.party_op(
        "secagg.share",
        session="s",
        state_id=state_id,
        weighting="samples",
        keys=["w"],
        clients=2,
        committee=["m0", "m1"],
        public_keys=[public["m0"], public["m1"]],
        lead=1,
        fractional_bits=16,
    )
    payload = open_sealed(
        members[0].core._party.secret("s/key"),
        public["c"].numpy().tobytes()[:32],
        reply["ciphertexts"][0].numpy().tobytes(),
        session="s",
        sender="c",
        recipient="m0",
        label="secagg/share",
    )
    return payload[34:]  # past the header (weighting, digest) and the kind byte


def test_share_seeds_do_not_repeat_when_every_global_generator_is_reseeded() -> None:
    # Execute: the same sharing twice, every common generator seeded alike before each.
    seeds = []
    for _ in range(2):
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        seeds.append(_seed_member_0_receives())

    # Assert: 32 bytes, not reproduced by reseeding (a seeded generator would repeat them).
    assert len(seeds[0]) == 32
    assert seeds[0] != seeds[1]
