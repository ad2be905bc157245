"""Beaver multiplication and truncation against plaintext PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpc.beaver import beaver, conv2d, matmul, mul, square, truncate
from mpc.errors import MPCError
from mpc.provider import TrustedDealer
from mpc.random import SecureRandom
from mpc.ring import FixedPointEncoder
from mpc.sharing import reconstruct, share

ENC = FixedPointEncoder(16)


def _ring(shape: tuple[int, ...]) -> torch.Tensor:
    return SecureRandom().ring_elements(shape)


@pytest.mark.parametrize("parties", [2, 3, 5])
def test_ring_products_equal_plaintext_products(parties: int) -> None:
    # Prepare: full-range ring elements, so every wrap-around is exercised.
    dealer, rng = TrustedDealer(parties), SecureRandom()
    x, y = _ring((4, 5)), _ring((4, 5))
    m = _ring((5, 3))
    images, kernels = _ring((2, 1, 6, 6)), _ring((3, 1, 3, 3))

    # Execute
    xs, ys, ms = share(x, parties, rng), share(y, parties, rng), share(m, parties, rng)
    products = reconstruct(mul(xs, ys, dealer))
    matrix = reconstruct(matmul(xs, ms, dealer))
    conv = reconstruct(
        conv2d(share(images, parties, rng), share(kernels, parties, rng), dealer, padding=1)
    )

    # Assert
    assert torch.equal(products, x * y)
    assert torch.equal(matrix, x @ m)
    assert torch.equal(conv, F.conv2d(images, kernels, padding=1))


@pytest.mark.parametrize("parties", [2, 3, 4])
def test_fixed_point_product_after_truncation(parties: int) -> None:
    # Prepare
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 32, generator=gen, dtype=torch.float64) * 4
    b = torch.randn(32, 16, generator=gen, dtype=torch.float64) * 4
    dealer, rng = TrustedDealer(parties), SecureRandom()

    # Execute
    product = matmul(share(ENC.encode(a), parties, rng), share(ENC.encode(b), parties, rng), dealer)
    result = ENC.decode(reconstruct(truncate(product, ENC.fractional_bits, dealer)))

    # Assert: rounding of 32 products plus one unit from truncation.
    assert float((result - a @ b).abs().max()) < 32 * 8 * 2.0**-16 + 2.0**-15


def test_local_truncation_fails_for_three_parties_and_ours_does_not() -> None:
    # Prepare: the trap of CrypTen issue #103.
    parties, rng, dealer = 3, SecureRandom(), TrustedDealer(3)
    values = torch.linspace(-100, 100, 10_000, dtype=torch.float64)
    doubled = share(ENC.encode(values) * ENC.scale, parties, rng)  # 2f fractional bits

    # Execute
    naive = ENC.decode(reconstruct([part >> 16 for part in doubled]))
    ours = ENC.decode(reconstruct(truncate(doubled, 16, dealer)))

    # Assert
    assert float((naive - values).abs().max()) > 1e6  # off by multiples of 2^(64-16-16)
    assert float((ours - values).abs().max()) <= 2.0**-15


@pytest.mark.parametrize("parties", [2, 3])
def test_square_matches_plaintext(parties: int) -> None:
    x = _ring((7,))
    assert torch.equal(
        reconstruct(square(share(x, parties, SecureRandom()), TrustedDealer(parties))), x * x
    )


def test_dealer_tuples_are_consistent_fresh_and_prefetched() -> None:
    # Prepare
    dealer = TrustedDealer(3)
    dealer.prefetch("matmul", (2, 3), (3, 4), count=2)

    # Execute
    first = dealer.beaver_triple("matmul", (2, 3), (3, 4))
    second = dealer.beaver_triple("matmul", (2, 3), (3, 4))
    third = dealer.beaver_triple("matmul", (2, 3), (3, 4))  # stock empty: made on demand

    # Assert
    for a, b, c in (first, second, third):
        assert torch.equal(reconstruct(c), reconstruct(a) @ reconstruct(b))
    assert not torch.equal(reconstruct(first[0]), reconstruct(second[0]))
    assert dealer.generated == 3


def test_mismatched_parties_and_unknown_ops_are_mpc_errors() -> None:
    rng = SecureRandom()
    x = share(torch.zeros(2, dtype=torch.int64), 2, rng)
    with pytest.raises(MPCError, match="provider of 3 parties"):
        mul(x, x, TrustedDealer(3))
    with pytest.raises(MPCError, match="no Beaver"):
        beaver("max", x, x, TrustedDealer(2))
    with pytest.raises(MPCError, match="at least 2"):
        TrustedDealer(1)
