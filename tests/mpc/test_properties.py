"""Property-based tests (hypothesis) for the secret-sharing arithmetic of ``mpc``.

References are independent of the code under test: Python's exact integers
reduced modulo 2^64 for the ring, Python's ``round`` for the encoder, plaintext
int64 / float64 tensors for the protocols. Every CSPRNG is a ``SecureRandom``
keyed by 32 bytes that hypothesis draws, and hypothesis runs derandomized with
no example database, so a failure replays identically and nothing is written
into the tree.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpc.beaver import matmul, mul, square, truncate
from mpc.errors import MPCError
from mpc.provider import TrustedDealer
from mpc.random import SecureRandom
from mpc.ring import FixedPointEncoder, wrap_add, wrap_mul, wrap_sub
from mpc.shared import SharedTensor
from mpc.sharing import reconstruct, share

RING = 2**64
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

BASE = settings(deadline=None, derandomize=True, database=None, max_examples=60)

KEYS = st.binary(min_size=32, max_size=32)
PARTIES = st.integers(min_value=2, max_value=6)
# Non-empty shapes (the empty case has its own test at the end).
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
# Fractional bits for the fixed-point protocol tests. Plain values are bounded by
# 2^(20 − f), so an untruncated product of two encodings, summed over at most 4
# terms, stays below 2^42: inside the range contract |x · y| · 2^(2f) < 2^63, and
# the truncations fail (documented probability ≈ |x| / 2^62) with odds ≈ 2^-20.
FIXED_BITS = st.sampled_from([8, 12, 16, 20])


def _signed(value: int) -> int:
    """A Python integer reduced modulo 2^64 into the int64 range."""
    return (value - INT64_MIN) % RING + INT64_MIN


def _ring(shape: tuple[int, ...]) -> st.SearchStrategy[torch.Tensor]:
    """int64 tensors over the whole ring (hypothesis favours 0, ±1 and the extremes)."""
    return hnp.arrays(np.int64, shape).map(torch.tensor)


def _reals(shape: tuple[int, ...], bound: float) -> st.SearchStrategy[torch.Tensor]:
    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False)
    return hnp.arrays(np.float64, shape, elements=elements).map(torch.tensor)


@st.composite
def _ring_triples(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shape = draw(SHAPES)
    return draw(_ring(shape)), draw(_ring(shape)), draw(_ring(shape))


# ---------------------------------------------------------------- ring Z/2^64


@settings(BASE, max_examples=100)
@given(_ring_triples())
def test_wrap_ops_equal_python_integers_mod_2_64(
    abc: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    # Prepare
    a, b, _ = abc
    pairs = list(zip(a.flatten().tolist(), b.flatten().tolist(), strict=True))

    # Execute
    added, subtracted, multiplied = wrap_add(a, b), wrap_sub(a, b), wrap_mul(a, b)

    # Assert
    assert added.dtype == subtracted.dtype == multiplied.dtype == torch.int64
    assert added.flatten().tolist() == [_signed(u + v) for u, v in pairs]
    assert subtracted.flatten().tolist() == [_signed(u - v) for u, v in pairs]
    assert multiplied.flatten().tolist() == [_signed(u * v) for u, v in pairs]


@settings(BASE, max_examples=100)
@given(_ring_triples())
def test_ring_laws(abc: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    a, b, c = abc
    zero = torch.zeros_like(a)
    assert torch.equal(wrap_add(a, b), wrap_add(b, a))
    assert torch.equal(wrap_mul(a, b), wrap_mul(b, a))
    assert torch.equal(wrap_add(wrap_add(a, b), c), wrap_add(a, wrap_add(b, c)))
    assert torch.equal(wrap_mul(wrap_mul(a, b), c), wrap_mul(a, wrap_mul(b, c)))
    assert torch.equal(wrap_mul(a, wrap_add(b, c)), wrap_add(wrap_mul(a, b), wrap_mul(a, c)))
    assert torch.equal(wrap_add(wrap_sub(a, b), b), a)  # subtraction inverts addition
    assert torch.equal(wrap_add(a, wrap_sub(zero, a)), zero)  # every element has a negative


# ---------------------------------------------------------------- fixed-point encoding


@st.composite
def _encodable(draw: st.DrawFn) -> tuple[int, list[float]]:
    """Fractional bits f and floats strictly inside the encoder's limit ±2^(62 − f)."""
    bits = draw(st.integers(min_value=0, max_value=30))
    limit = float(2 ** (62 - bits))
    element = st.floats(-limit, limit, exclude_min=True, exclude_max=True, allow_nan=False)
    return bits, draw(st.lists(element, min_size=1, max_size=8))


@settings(BASE, max_examples=150)
@given(_encodable())
def test_encode_is_round_half_even_and_decode_is_within_half_a_unit(
    case: tuple[int, list[float]],
) -> None:
    # Prepare
    bits, values = case
    encoder = FixedPointEncoder(bits)

    # Execute
    encoded = encoder.encode(torch.tensor(values, dtype=torch.float64))
    decoded = encoder.decode(encoded)

    # Assert: x · 2^f is exact in float64 (a power of two, no overflow), so Python's
    # round() (half to even, like torch.round) is an exact reference; the documented
    # round-trip error is then at most half a unit, 2^-(f+1).
    assert encoded.dtype == torch.int64
    assert encoded.tolist() == [round(v * 2**bits) for v in values]
    for got, want in zip(decoded.tolist(), values, strict=True):
        assert abs(got - want) <= 2.0 ** -(bits + 1)


@settings(BASE, max_examples=100)
@given(
    bits=st.integers(min_value=0, max_value=30),
    factor=st.floats(min_value=1.0, max_value=2.0**200),
    negative=st.booleans(),
)
def test_values_at_or_beyond_the_limit_raise_naming_value_and_limit(
    bits: int, factor: float, negative: bool
) -> None:
    # Prepare: |x| ≥ 2^(62 − f), the documented exclusive limit.
    encoder = FixedPointEncoder(bits)
    magnitude = encoder.limit * factor
    bad = -magnitude if negative else magnitude

    # Execute
    with pytest.raises(MPCError) as error:
        encoder.encode(torch.tensor([0.5, bad], dtype=torch.float64))

    # Assert: the message names the offending magnitude (not its sign) and the limit.
    message = str(error.value)
    assert f"value {magnitude:g} " in message
    assert f"±{encoder.limit:g}" in message
    assert f"({bits} fractional bits)" in message


# ---------------------------------------------------------------- share / reconstruct


@settings(BASE, max_examples=100)
@given(parties=PARTIES, key=KEYS, secret=SHAPES.flatmap(_ring))
def test_any_secret_reconstructs_exactly(parties: int, key: bytes, secret: torch.Tensor) -> None:
    # Execute
    shares = share(secret, parties, SecureRandom(key))

    # Assert
    assert len(shares) == parties
    assert all(part.dtype == torch.int64 and part.shape == secret.shape for part in shares)
    assert torch.equal(reconstruct(shares), secret)
    # A share equals the whole secret with probability 2^(-64 · numel).
    assert not any(torch.equal(part, secret) for part in shares)


@st.composite
def _secret_pairs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    shape = draw(SHAPES)
    return draw(_ring(shape)), draw(_ring(shape))


@settings(BASE, max_examples=100)
@given(parties=PARTIES, key=KEYS, secrets=_secret_pairs())
def test_first_shares_come_from_the_stream_alone(
    parties: int, key: bytes, secrets: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # Prepare: share() draws the first n − 1 shares uniformly from the CSPRNG and
    # sets the last to s − Σ r_i, so with one key two secrets differ only there.
    first, second = secrets

    # Execute
    shares_first = share(first, parties, SecureRandom(key))
    shares_second = share(second, parties, SecureRandom(key))
    stream = SecureRandom(key)
    masks = [stream.ring_elements(first.shape) for _ in range(parties - 1)]

    # Assert
    for got_first, got_second, mask in zip(shares_first, shares_second, masks, strict=False):
        assert torch.equal(got_first, mask)
        assert torch.equal(got_second, mask)
    assert torch.equal(shares_first[-1] - shares_second[-1], first - second)


@settings(BASE, max_examples=10)
@given(parties=PARTIES, key=KEYS, value=st.integers(INT64_MIN, INT64_MAX))
def test_every_share_looks_uniform_whatever_the_secret(
    parties: int, key: bytes, value: int
) -> None:
    # Prepare: one constant secret in 4,096 entries. Any n − 1 shares are
    # independent of it; the checkable part is that each share's 64 bits are fair
    # coins even for a constant (worst-case) secret.
    count = 4096
    secret = torch.full((count,), value, dtype=torch.int64)
    bits = torch.arange(64, dtype=torch.int64)

    # Execute
    shares = share(secret, parties, SecureRandom(key))

    # Assert: within 6 standard deviations of a fair coin over 4,096 draws.
    for part in shares:
        ones = ((part.unsqueeze(1) >> bits) & 1).double().mean(dim=0)
        assert float((ones - 0.5).abs().max()) < 6 * 0.5 / math.sqrt(count)


# ---------------------------------------------------------------- truncation

# |x| ≤ 2^40: well inside the range, so the documented failure probability of
# either truncation (≈ |x| / 2^62) is ≈ 2^-22 per element.
TRUNCATABLE = st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=16).map(
    lambda values: torch.tensor(values, dtype=torch.int64)
)


@settings(BASE, max_examples=100)
@given(key=KEYS, dealer_key=KEYS, bits=st.integers(0, 30), x=TRUNCATABLE)
def test_two_party_local_truncation_is_within_one_unit(
    key: bytes, dealer_key: bytes, bits: int, x: torch.Tensor
) -> None:
    # Prepare
    dealer = TrustedDealer(2, SecureRandom(dealer_key))

    # Execute
    result = reconstruct(truncate(share(x, 2, SecureRandom(key)), bits, dealer))

    # Assert: SecureML's local shift, exact up to ±1 of the arithmetic shift.
    assert int((result - (x >> bits)).abs().max()) <= 1


@settings(BASE, max_examples=100)
@given(parties=st.integers(3, 5), key=KEYS, dealer_key=KEYS, bits=st.integers(0, 30), x=TRUNCATABLE)
def test_dealer_truncation_is_within_one_unit(
    parties: int, key: bytes, dealer_key: bytes, bits: int, x: torch.Tensor
) -> None:
    # Prepare
    dealer = TrustedDealer(parties, SecureRandom(dealer_key))

    # Execute
    result = reconstruct(truncate(share(x, parties, SecureRandom(key)), bits, dealer))

    # Assert: the truncation pair [r], [r >> bits] gives x >> bits up to ±1.
    assert int((result - (x >> bits)).abs().max()) <= 1


# ---------------------------------------------------------------- Beaver products


@st.composite
def _ring_matrices(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x and y of shape (m, k), w of shape (k, p), all over the whole ring."""
    m, k, p = (draw(st.integers(1, 4)) for _ in range(3))
    return draw(_ring((m, k))), draw(_ring((m, k))), draw(_ring((k, p)))


@settings(BASE, max_examples=60)
@given(parties=PARTIES, key=KEYS, dealer_key=KEYS, operands=_ring_matrices())
def test_beaver_ring_products_equal_plaintext_exactly(
    parties: int,
    key: bytes,
    dealer_key: bytes,
    operands: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    # Prepare
    x, y, w = operands
    rng, dealer = SecureRandom(key), TrustedDealer(parties, SecureRandom(dealer_key))
    xs, ys, ws = share(x, parties, rng), share(y, parties, rng), share(w, parties, rng)

    # Execute
    products = reconstruct(mul(xs, ys, dealer))
    matrix = reconstruct(matmul(xs, ws, dealer))
    squares = reconstruct(square(xs, dealer))

    # Assert: Beaver's protocol is exact in Z/2^64, whatever wraps.
    assert torch.equal(products, x * y)
    assert torch.equal(matrix, x @ w)
    assert torch.equal(squares, x * x)


@st.composite
def _fixed_point_case(
    draw: st.DrawFn,
) -> tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """f, parties, and plain x, y of shape (m, k) and w of shape (k, p), |·| ≤ 2^(20 − f)."""
    bits, parties = draw(FIXED_BITS), draw(st.integers(2, 5))
    bound = float(2 ** (20 - bits))
    m, k, p = (draw(st.integers(1, 4)) for _ in range(3))
    x, y, w = draw(_reals((m, k), bound)), draw(_reals((m, k), bound)), draw(_reals((k, p), bound))
    return bits, parties, x, y, w


def _product_bound(x: torch.Tensor, y: torch.Tensor, bits: int, terms: int) -> torch.Tensor:
    """Worst error of a truncated fixed-point product against the float64 one.

    Each encoding is off by at most u/2 (u = 2^-f), so (x + δx)(y + δy) − xy is
    at most (|x| + |y|) · u/2 + u²/4 per term (``x`` and ``y`` are the per-output
    sums of the factors' magnitudes, ``terms`` the number of products summed).
    Truncation is a floor, within one unit, then ±1 unit from the protocol: < 2u.
    Float64 round-off of the reference is below 2^-52 · 2^(42 − 2f) ≪ u.
    """
    unit = 2.0**-bits
    return (x + y) * unit / 2 + terms * unit**2 / 4 + 2 * unit


@settings(BASE, max_examples=60)
@given(case=_fixed_point_case(), key=KEYS, dealer_key=KEYS)
def test_fixed_point_beaver_products_match_float64(
    case: tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor], key: bytes, dealer_key: bytes
) -> None:
    # Prepare
    bits, parties, x, y, w = case
    encoder = FixedPointEncoder(bits)
    rng, dealer = SecureRandom(key), TrustedDealer(parties, SecureRandom(dealer_key))
    ex, ey, ew = encoder.encode(x), encoder.encode(y), encoder.encode(w)
    xs, ys, ws = share(ex, parties, rng), share(ey, parties, rng), share(ew, parties, rng)

    # Execute
    products = encoder.decode(reconstruct(truncate(mul(xs, ys, dealer), bits, dealer)))
    matrix = encoder.decode(reconstruct(truncate(matmul(xs, ws, dealer), bits, dealer)))

    # Assert: against float64, with the error budget of encoding plus truncation...
    k = x.shape[1]
    assert bool(((products - x * y).abs() <= _product_bound(x.abs(), y.abs(), bits, 1)).all())
    matrix_bound = _product_bound(x.abs().sum(1, keepdim=True), w.abs().sum(0), bits, k)
    assert bool(((matrix - x @ w).abs() <= matrix_bound).all())
    # ...and against the plaintext product of the encodings, where only truncation
    # remains: strictly less than 2 units (values < 2^53, so float64 is exact).
    unit = 2.0**-bits
    assert float((products - (ex * ey).double() * unit**2).abs().max()) < 2 * unit
    assert float((matrix - (ex @ ew).double() * unit**2).abs().max()) < 2 * unit


@settings(BASE, max_examples=60)
@given(
    case=_fixed_point_case(),
    scalar=st.floats(-4.0, 4.0, allow_nan=False),
    key=KEYS,
    dealer_key=KEYS,
)
def test_shared_tensor_products_match_float64(
    case: tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor],
    scalar: float,
    key: bytes,
    dealer_key: bytes,
) -> None:
    # Prepare: |scalar| ≤ 4 keeps |x · scalar| · 2^(2f) ≤ 2^42 as for the shared factors.
    bits, parties, x, y, w = case
    encoder = FixedPointEncoder(bits)
    rng, dealer = SecureRandom(key), TrustedDealer(parties, SecureRandom(dealer_key))
    sx, sy, sw = (SharedTensor.from_float(t, dealer, rng, encoder) for t in (x, y, w))

    # Execute
    products = (sx * sy).reconstruct()
    scaled = (sx * scalar).reconstruct()
    matrix = sx.matmul(sw).reconstruct()
    difference = (sx - sy).reconstruct()

    # Assert: the same budget as the raw Beaver products (see _product_bound).
    assert bool(((products - x * y).abs() <= _product_bound(x.abs(), y.abs(), bits, 1)).all())
    scalar_bound = _product_bound(x.abs(), torch.full_like(x, abs(scalar)), bits, 1)
    assert bool(((scaled - x * scalar).abs() <= scalar_bound).all())
    matrix_bound = _product_bound(x.abs().sum(1, keepdim=True), w.abs().sum(0), bits, x.shape[1])
    assert bool(((matrix - x @ w).abs() <= matrix_bound).all())
    # Linear operations are exact on the encodings.
    assert torch.equal(difference, encoder.decode(encoder.encode(x) - encoder.encode(y)))


# ---------------------------------------------------------------- edge cases


def test_empty_secret_shares_and_reconstructs() -> None:
    secret = torch.zeros((2, 0), dtype=torch.int64)
    shares = share(secret, 3, SecureRandom(bytes(32)))
    assert torch.equal(reconstruct(shares), secret)
