"""F_p, p = 2^61 − 1: arithmetic and encoding against Python's exact integers."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc.errors import MPCError
from mpc.field import (
    ENCODING_LIMIT,
    MAX_SUMMANDS,
    P,
    check_field,
    field_add,
    field_decode,
    field_decode_int,
    field_encode,
    field_encode_int,
    field_expand,
    field_matmul,
    field_mul,
    field_mul_scalar,
    field_neg,
    field_random,
    field_sub,
    field_sum,
)
from mpc.random import SecureRandom

EDGES = [0, 1, 2, 3, 2**30, 2**31 - 1, 2**31, 2**32, 2**60, 2**60 + 1, P // 2, P // 2 + 1]
EDGES += [P - 3, P - 2, P - 1]
elements = st.integers(min_value=0, max_value=P - 1)


def _tensor(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def test_arithmetic_on_every_pair_of_edge_values_matches_python() -> None:
    # Prepare
    pairs = list(itertools.product(EDGES, repeat=2))
    a, b = _tensor([x for x, _ in pairs]), _tensor([y for _, y in pairs])

    # Execute
    results = {
        "add": field_add(a, b).tolist(),
        "sub": field_sub(a, b).tolist(),
        "mul": field_mul(a, b).tolist(),
    }

    # Assert
    assert results["add"] == [(x + y) % P for x, y in pairs]
    assert results["sub"] == [(x - y) % P for x, y in pairs]
    assert results["mul"] == [x * y % P for x, y in pairs]
    assert field_neg(_tensor(EDGES)).tolist() == [-x % P for x in EDGES]


def test_mul_of_many_random_elements_matches_python() -> None:
    # Prepare: more than one 2^16-element chunk, with a ragged last chunk.
    rng = SecureRandom(bytes(32))
    a, b = field_random((150_001,), rng), field_random((150_001,), rng)

    # Execute
    product = field_mul(a, b)

    # Assert
    assert product.tolist() == [x * y % P for x, y in zip(a.tolist(), b.tolist(), strict=True)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(elements, elements), min_size=1, max_size=50))
def test_arithmetic_matches_python_integers(pairs: list[tuple[int, int]]) -> None:
    # Prepare
    a, b = _tensor([x for x, _ in pairs]), _tensor([y for _, y in pairs])

    # Execute / Assert
    assert field_mul(a, b).tolist() == [x * y % P for x, y in pairs]
    assert field_add(a, b).tolist() == [(x + y) % P for x, y in pairs]
    assert field_sub(a, b).tolist() == [(x - y) % P for x, y in pairs]
    assert field_neg(a).tolist() == [-x % P for x, _ in pairs]


@settings(max_examples=100, deadline=None)
@given(st.lists(elements, min_size=1, max_size=20), st.integers(-(2**100), 2**100))
def test_mul_scalar_accepts_any_python_integer(values: list[int], scalar: int) -> None:
    # Execute
    product = field_mul_scalar(_tensor(values), scalar)

    # Assert
    assert product.tolist() == [x * scalar % P for x in values]


def test_mul_broadcasts_without_touching_its_inputs() -> None:
    # Prepare
    column, row = _tensor(EDGES).reshape(-1, 1), _tensor(EDGES[:4])
    before = column.clone(), row.clone()

    # Execute
    table = field_mul(column, row)

    # Assert
    assert table.tolist() == [[x * y % P for y in EDGES[:4]] for x in EDGES]
    assert torch.equal(column, before[0]) and torch.equal(row, before[1])


def test_chunked_mul_broadcasts_like_the_unchunked_one() -> None:
    # Prepare: a 300 × 300 outer product (90,000 > 2^16 elements) and a scalar.
    rng = SecureRandom(bytes(range(1, 33)))
    column, row = field_random((300, 1), rng), field_random((1, 300), rng)
    scalar = torch.tensor(P - 1, dtype=torch.int64)

    # Execute
    table, negated = field_mul(column, row), field_mul(scalar, column.expand(300, 300))

    # Assert
    assert table.tolist() == [[x * y % P for y in row[0].tolist()] for x in column[:, 0].tolist()]
    assert negated.tolist() == [[-x % P] * 300 for x in column[:, 0].tolist()]


def test_sum_of_many_large_elements_does_not_overflow() -> None:
    # Prepare: 10,000 copies of p − 1 would overflow int64 about 2,500 times over.
    top = torch.full((100, 100), P - 1, dtype=torch.int64)
    rng = SecureRandom(bytes(range(32)))
    mixed = field_random((7, 300), rng)

    # Execute / Assert
    assert int(field_sum(top)) == 10_000 * (P - 1) % P
    assert field_sum(top, dim=0).tolist() == [100 * (P - 1) % P] * 100
    assert field_sum(mixed, dim=1).tolist() == [sum(row) % P for row in mixed.tolist()]
    assert field_sum(mixed, dim=-2).tolist() == [sum(c) % P for c in mixed.T.tolist()]


def test_sum_refuses_more_terms_than_its_limbs_hold() -> None:
    # Prepare: an expanded view has 2^31 elements without allocating them.
    huge = torch.zeros(1, dtype=torch.int64).expand(2**31)

    # Execute / Assert
    with pytest.raises(MPCError, match="2147483648"):
        field_sum(huge)


def test_random_elements_are_in_range_and_spread_over_the_field() -> None:
    # Execute
    values = field_random((50_000,), SecureRandom())

    # Assert: in [0, p) and each of the 61 bits set about half the time.
    assert int(values.min()) >= 0 and int(values.max()) < P
    ones = ((values.unsqueeze(1) >> torch.arange(61)) & 1).double().mean(dim=0)
    assert float((ones - 0.5).abs().max()) < 5 * 0.5 / 50_000**0.5


class _StreamOfOnes(SecureRandom):
    """A generator whose first draw is all ones (low 61 bits = p), then honest."""

    def __init__(self) -> None:
        super().__init__(bytes(32))
        self.first = True

    def ring_elements(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        if self.first:
            self.first = False
            return torch.full(tuple(shape), -1, dtype=torch.int64)
        return super().ring_elements(shape)


def test_random_redraws_the_value_p_instead_of_keeping_or_folding_it() -> None:
    # Execute
    values = field_random((2, 3), _StreamOfOnes())

    # Assert
    assert values.shape == (2, 3)
    assert int(values.max()) < P


def test_check_field_rejects_wrong_dtype_and_out_of_range() -> None:
    check_field(_tensor(EDGES))
    with pytest.raises(MPCError, match="int32"):
        check_field(torch.zeros(3, dtype=torch.int32))
    with pytest.raises(MPCError, match=str(P)):
        check_field(_tensor([0, P]))
    with pytest.raises(MPCError, match="-1"):
        check_field(_tensor([-1, 5]))


def test_encode_decode_round_trip_within_half_a_unit() -> None:
    # Prepare
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5_000, generator=gen, dtype=torch.float64) * 1e6

    # Execute
    encoded = field_encode(x, fractional_bits=16)
    back = field_decode(encoded, fractional_bits=16)

    # Assert
    check_field(encoded)
    assert float((back - x).abs().max()) <= 0.5 / 2**16


def test_negative_values_encode_as_p_minus_their_magnitude() -> None:
    encoded = field_encode(torch.tensor([-1.0, -0.5, 0.0, 2.25]), fractional_bits=2)
    assert encoded.tolist() == [P - 4, P - 2, 0, 9]
    assert field_decode_int(encoded).tolist() == [-4, -2, 0, 9]


def test_encode_refuses_values_beyond_the_limit_naming_value_and_limit() -> None:
    # Prepare: with f = 16 the real limit is 2^50 / 2^16 = 2^34.
    limit = float(2**34)

    # Execute / Assert
    field_encode(torch.tensor([limit - 1.0, -(limit - 1.0)], dtype=torch.float64))
    with pytest.raises(MPCError, match=r"-1\.71799e\+10.*±1\.71799e\+10"):
        field_encode(torch.tensor([1.0, -limit], dtype=torch.float64))
    with pytest.raises(MPCError, match="NaN"):
        field_encode(torch.tensor([float("nan")]))
    with pytest.raises(MPCError, match="fractional bits"):
        field_encode(1.0, fractional_bits=40)
    with pytest.raises(MPCError, match="outside"):
        field_encode_int(_tensor([ENCODING_LIMIT]))


def test_sums_of_the_largest_encodings_keep_their_sign() -> None:
    # Prepare: MAX_SUMMANDS encodings of the most negative allowed integer.
    values = torch.full((MAX_SUMMANDS,), -(ENCODING_LIMIT - 1), dtype=torch.int64)

    # Execute
    total = field_decode_int(field_sum(field_encode_int(values)))

    # Assert
    assert int(total) == -MAX_SUMMANDS * (ENCODING_LIMIT - 1)


_edge = st.sampled_from([0, 1, 2, (1 << 21) - 1, 1 << 21, (1 << 42) + 5, P - 2, P - 1])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    k=st.integers(1, 6),
    m=st.integers(1, 3),
    values=st.lists(st.one_of(_edge, st.integers(0, P - 1)), min_size=36, max_size=36),
)
def test_matmul_matches_python_integers(n: int, k: int, m: int, values: list[int]) -> None:
    a = torch.tensor(values[: n * k], dtype=torch.int64).reshape(n, k)
    b = torch.tensor(values[18 : 18 + k * m], dtype=torch.int64).reshape(k, m)
    expected = [
        [sum(int(a[i, t]) * int(b[t, j]) for t in range(k)) % P for j in range(m)] for i in range(n)
    ]
    assert field_matmul(a, b).tolist() == expected


def test_matmul_of_the_largest_elements_over_many_terms() -> None:
    terms = 5000  # limb products of 2^42 summed 5000 times: still below 2^63
    a = torch.full((2, terms), P - 1, dtype=torch.int64)
    b = torch.full((terms, 3), P - 1, dtype=torch.int64)
    assert field_matmul(a, b).tolist() == [[terms % P] * 3] * 2  # (−1)·(−1) = 1, summed


def test_expanded_field_elements_are_in_range_and_repeat_per_seed() -> None:
    seed = bytes(range(32))
    values = field_expand(seed, 3, (4096,))
    assert int(values.min()) >= 0 and int(values.max()) < P
    assert torch.equal(values, field_expand(seed, 3, (4096,)))
    assert not torch.equal(values, field_expand(seed, 4, (4096,)))
