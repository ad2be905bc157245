"""Randomness a peer must not predict: were the seeds of the shares drawn from a seeded,
non-cryptographic generator (torch's, Python's, NumPy's), a committee member that
knows the seed would compute the other members' shares and so the client's update."""

from __future__ import annotations

import random

import numpy as np
import torch

from tests.mpc.secure_inputs import member_views


def _seed_member_0_receives() -> bytes:
    """One client shares for a committee of two; member 0 opens its share: a seed."""
    return member_views(torch.ones(8), lead=1)[0].numpy().tobytes()


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
