"""Additive sharing: exact reconstruction, uniform shares, CSPRNG independence."""

from __future__ import annotations

import pytest
import torch

from mpc.errors import MPCError
from mpc.random import SecureRandom
from mpc.sharing import reconstruct, share


@pytest.mark.parametrize("parties", [2, 3, 5])
def test_shares_reconstruct_exactly_including_extremes(parties: int) -> None:
    # Prepare
    secret = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 123_456_789_012], dtype=torch.int64)

    # Execute
    shares = share(secret, parties, SecureRandom())

    # Assert
    assert len(shares) == parties
    assert torch.equal(reconstruct(shares), secret)


def test_fewer_than_all_shares_look_uniform_whatever_the_secret() -> None:
    # Prepare: two very different secrets, 20,000 sharings each.
    rng = SecureRandom()
    zeros = torch.zeros(20_000, dtype=torch.int64)
    big = torch.full((20_000,), 2**62 + 12345, dtype=torch.int64)

    # Execute: party 0's share; each of its 64 bits should be a fair coin.
    bits = torch.arange(64, dtype=torch.int64)
    for secret in (zeros, big):
        first = share(secret, 3, rng)[0]
        ones = ((first.unsqueeze(1) >> bits) & 1).double().mean(dim=0)

        # Assert: 5 standard deviations of a fair coin over 20,000 draws.
        assert float((ones - 0.5).abs().max()) < 5 * 0.5 / 20_000**0.5


def test_shares_do_not_come_from_torchs_global_generator() -> None:
    # Prepare / Execute: the same torch seed before each sharing.
    secret = torch.arange(8, dtype=torch.int64)
    torch.manual_seed(0)
    first = share(secret, 2, SecureRandom())[0]
    torch.manual_seed(0)
    second = share(secret, 2, SecureRandom())[0]

    # Assert
    assert not torch.equal(first, second)


def test_fixed_key_stream_is_reproducible_and_advances() -> None:
    # Prepare
    key = bytes(range(32))

    # Execute
    a, b = SecureRandom(key), SecureRandom(key)
    first, again = a.ring_elements((4,)), b.ring_elements((4,))
    nxt = a.ring_elements((4,))

    # Assert
    assert torch.equal(first, again)
    assert not torch.equal(first, nxt)


def test_bad_inputs_are_mpc_errors() -> None:
    rng = SecureRandom()
    with pytest.raises(MPCError, match="at least 2 parties"):
        share(torch.zeros(2, dtype=torch.int64), 1, rng)
    with pytest.raises(MPCError, match="int64"):
        share(torch.zeros(2), 2, rng)
    with pytest.raises(MPCError, match="share 1"):
        reconstruct([torch.zeros(2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)])
