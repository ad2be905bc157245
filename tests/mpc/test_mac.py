"""SPDZ MACs: honest aggregation passes the check, every tampering is caught."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc.errors import MPCError
from mpc.field import (
    P,
    field_add,
    field_decode,
    field_encode,
    field_mul_scalar,
    field_random,
)
from mpc.mac import (
    authenticated_mask,
    input_shares,
    mac_check,
    mac_check_share,
    mask_input,
    random_coefficients,
    reconstruct_field,
    share_field,
    share_mac_key,
)
from mpc.random import SecureRandom

PARTIES = 3
CLIENTS = 5
LENGTH = 200


@dataclass
class Aggregate:
    """Each party's shares of Σ_clients x and of its MAC, after local addition."""

    alpha: int
    alpha_shares: list[int]
    shares: list[torch.Tensor]
    mac_shares: list[torch.Tensor]
    expected: torch.Tensor  # float64 sum of the clients' plain inputs


def _aggregate(rng: SecureRandom) -> Aggregate:
    """Dealer masks, clients publish ε, parties add their authenticated shares."""
    alpha, alpha_shares = share_mac_key(PARTIES, rng)
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(LENGTH, generator=gen, dtype=torch.float64) * 100 for _ in range(CLIENTS)]
    zero = torch.zeros(LENGTH, dtype=torch.int64)
    shares, macs = [zero] * PARTIES, [zero] * PARTIES
    for x in inputs:
        dealt = authenticated_mask((LENGTH,), PARTIES, alpha, rng)
        eps = mask_input(field_encode(x), dealt.mask)  # the only message from the client
        for i in range(PARTIES):
            x_i, m_i = input_shares(eps, dealt.shares[i], dealt.mac_shares[i], alpha_shares[i], i)
            shares[i], macs[i] = field_add(shares[i], x_i), field_add(macs[i], m_i)
    return Aggregate(alpha, alpha_shares, shares, macs, torch.stack(inputs).sum(dim=0))


def _check(agg: Aggregate, shares: list[torch.Tensor], macs: list[torch.Tensor]) -> bool:
    """Open the shares, then draw ρ, then every party's σ_i, then the verdict."""
    opened = reconstruct_field(shares)
    rho = random_coefficients(opened.numel(), SecureRandom())
    sigmas = [mac_check_share(opened, macs[i], agg.alpha_shares[i], rho) for i in range(PARTIES)]
    return mac_check(sigmas)


@pytest.fixture(scope="module")
def agg() -> Aggregate:
    return _aggregate(SecureRandom(bytes(range(32))))


def _shifted(tensors: list[torch.Tensor], party: int, delta: torch.Tensor) -> list[torch.Tensor]:
    return [field_add(t, delta) if i == party else t for i, t in enumerate(tensors)]


def _at(position: int, value: int) -> torch.Tensor:
    delta = torch.zeros(LENGTH, dtype=torch.int64)
    delta[position] = value % P
    return delta


def test_shares_reconstruct_edge_values_exactly() -> None:
    secret = torch.tensor([0, 1, 2**31, 2**60, P - 1], dtype=torch.int64)
    for parties in (2, 3, 7):
        assert torch.equal(reconstruct_field(share_field(secret, parties, SecureRandom())), secret)


def test_sharing_rejects_bad_inputs() -> None:
    with pytest.raises(MPCError, match="at least 2 parties"):
        share_field(torch.zeros(2, dtype=torch.int64), 1, SecureRandom())
    with pytest.raises(MPCError, match="outside"):
        share_field(torch.tensor([P], dtype=torch.int64), 2, SecureRandom())
    with pytest.raises(MPCError, match="shape"):
        reconstruct_field([torch.zeros(2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)])


def test_mac_key_shares_sum_to_a_nonzero_key() -> None:
    alpha, shares = share_mac_key(4, SecureRandom())
    assert 0 < alpha < P and len(shares) == 4
    assert sum(shares) % P == alpha


def test_dealer_mask_shares_and_mac_shares_are_consistent() -> None:
    # Execute
    alpha, _ = share_mac_key(PARTIES, SecureRandom())
    dealt = authenticated_mask((4, 5), PARTIES, alpha, SecureRandom())

    # Assert
    assert torch.equal(reconstruct_field(dealt.shares), dealt.mask)
    assert torch.equal(reconstruct_field(dealt.mac_shares), field_mul_scalar(dealt.mask, alpha))
    with pytest.raises(MPCError, match="MAC key"):
        authenticated_mask((2,), PARTIES, 0, SecureRandom())


def test_input_shares_authenticate_the_clients_value() -> None:
    # Prepare
    rng = SecureRandom()
    alpha, alpha_shares = share_mac_key(PARTIES, rng)
    x = field_random((10,), rng)
    dealt = authenticated_mask((10,), PARTIES, alpha, rng)

    # Execute
    eps = mask_input(x, dealt.mask)
    pairs = [
        input_shares(eps, dealt.shares[i], dealt.mac_shares[i], alpha_shares[i], i)
        for i in range(PARTIES)
    ]

    # Assert
    assert torch.equal(reconstruct_field([s for s, _ in pairs]), x)
    assert torch.equal(reconstruct_field([m for _, m in pairs]), field_mul_scalar(x, alpha))


def test_input_shares_reject_an_out_of_range_masked_input() -> None:
    zeros = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(MPCError, match="masked input"):
        input_shares(torch.tensor([0, P, 1]), zeros, zeros, 5, 0)
    with pytest.raises(MPCError, match="shape"):
        input_shares(torch.zeros(4, dtype=torch.int64), zeros, zeros, 5, 0)


def test_honest_aggregation_passes_and_equals_the_float_sum(agg: Aggregate) -> None:
    # Execute
    passed = _check(agg, agg.shares, agg.mac_shares)
    total = field_decode(reconstruct_field(agg.shares))

    # Assert: each encoding is off by at most 2^-17, so the sum by CLIENTS · 2^-17.
    assert passed
    assert float((total - agg.expected).abs().max()) <= CLIENTS * 2.0**-16


@pytest.mark.parametrize("value", [1, 2**31, 2**60, P - 1, 123_456_789_012_345])
@pytest.mark.parametrize("party", [0, PARTIES - 1])
def test_shifting_a_share_of_the_sum_fails_the_check(
    agg: Aggregate, value: int, party: int
) -> None:
    shares = _shifted(agg.shares, party, _at(7, value))
    assert not _check(agg, shares, agg.mac_shares)


@pytest.mark.parametrize("value", [1, 2**60, P - 1])
def test_shifting_a_mac_share_fails_the_check(agg: Aggregate, value: int) -> None:
    macs = _shifted(agg.mac_shares, 1, _at(0, value))
    assert not _check(agg, agg.shares, macs)


def test_many_random_shifts_of_whole_vectors_all_fail(agg: Aggregate) -> None:
    rng = SecureRandom()
    for trial in range(100):
        delta = field_random((LENGTH,), rng)
        tampered_shares = _shifted(agg.shares, trial % PARTIES, delta)
        tampered_macs = _shifted(agg.mac_shares, (trial + 1) % PARTIES, delta)
        assert not _check(agg, tampered_shares, agg.mac_shares)
        assert not _check(agg, agg.shares, tampered_macs)


@settings(max_examples=100, deadline=None)
@given(
    delta=st.integers(1, P - 1),
    guess=st.integers(0, P - 1),
    position=st.integers(0, LENGTH - 1),
)
def test_a_party_fixing_its_mac_with_a_guessed_key_fails(
    agg: Aggregate, delta: int, guess: int, position: int
) -> None:
    # Prepare: shift the value by δ and the MAC by guess·δ, as if guess were α.
    if guess == agg.alpha:
        return  # probability 2^-61; the next test covers the correct guess
    shares = _shifted(agg.shares, 0, _at(position, delta))
    macs = _shifted(agg.mac_shares, 0, _at(position, guess * delta))

    # Execute / Assert
    assert not _check(agg, shares, macs)


def test_the_check_is_only_as_strong_as_the_secrecy_of_alpha(agg: Aggregate) -> None:
    # A party that knew α would forge consistently: the check cannot catch it.
    shares = _shifted(agg.shares, 0, _at(3, 99))
    macs = _shifted(agg.mac_shares, 0, _at(3, agg.alpha * 99))
    assert _check(agg, shares, macs)


def test_coefficients_known_before_opening_let_errors_cancel(agg: Aggregate) -> None:
    # Prepare: ρ leaked early; shift positions 0 and 1 so that ρ_0·δ_0 + ρ_1·δ_1 = 0.
    rho = random_coefficients(LENGTH, SecureRandom())
    rho_0, rho_1 = int(rho[0]), int(rho[1])
    delta_0 = 12345
    delta_1 = -rho_0 * delta_0 * pow(rho_1, -1, P) % P
    shares = _shifted(agg.shares, 2, field_add(_at(0, delta_0), _at(1, delta_1)))

    # Execute: the MAC shares are untouched; α is never used by the cheater.
    opened = reconstruct_field(shares)
    sigmas = [
        mac_check_share(opened, agg.mac_shares[i], agg.alpha_shares[i], rho) for i in range(3)
    ]

    # Assert: the forged sum passes, which is why ρ must be drawn after opening.
    assert mac_check(sigmas)
    assert not torch.equal(opened, reconstruct_field(agg.shares))


def test_mac_check_share_rejects_mismatched_inputs(agg: Aggregate) -> None:
    opened = reconstruct_field(agg.shares)
    with pytest.raises(MPCError, match="coefficients"):
        mac_check_share(opened, agg.mac_shares[0], agg.alpha_shares[0], opened[:5])
    with pytest.raises(MPCError, match="shape"):
        mac_check_share(opened[:5], agg.mac_shares[0], agg.alpha_shares[0], opened[:5])
    with pytest.raises(MPCError, match="every party"):
        mac_check([0])
