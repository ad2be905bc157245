"""Z/2^64 arithmetic and fixed-point encoding against float64 references."""

from __future__ import annotations

import pytest
import torch

from mpc.errors import MPCError
from mpc.ring import FixedPointEncoder, wrap_add, wrap_mul, wrap_sub

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def test_ring_operations_wrap_modulo_2_64() -> None:
    # Prepare
    top = torch.tensor([INT64_MAX], dtype=torch.int64)
    bottom = torch.tensor([INT64_MIN], dtype=torch.int64)
    one = torch.tensor([1], dtype=torch.int64)

    # Execute / Assert: the reference is Python's exact integers reduced mod 2^64.
    assert wrap_add(top, one).item() == INT64_MIN
    assert wrap_sub(bottom, one).item() == INT64_MAX
    product = wrap_mul(top, torch.tensor([3], dtype=torch.int64)).item()
    assert product == ((INT64_MAX * 3 + 2**63) % 2**64) - 2**63


def test_encode_decode_round_trip_within_half_a_unit() -> None:
    # Prepare
    encoder = FixedPointEncoder(16)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1000

    # Execute
    back = encoder.decode(encoder.encode(x))

    # Assert
    assert float((back - x).abs().max()) <= 0.5 / encoder.scale


def test_product_of_encodings_truncates_to_the_float_product() -> None:
    # Prepare: the contract of the encoding: a product carries 2f fractional bits.
    encoder = FixedPointEncoder(16)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(500, generator=gen, dtype=torch.float64) * 100
    y = torch.randn(500, generator=gen, dtype=torch.float64) * 100

    # Execute
    product = wrap_mul(encoder.encode(x), encoder.encode(y))
    decoded = encoder.decode(torch.div(product, encoder.scale, rounding_mode="floor"))

    # Assert: error from two roundings (each ≤ 2^-17 relative to the other factor) and a floor.
    bound = (x.abs() + y.abs() + 2) / encoder.scale
    assert bool(((decoded - x * y).abs() <= bound).all())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2.0**46, -(2.0**47)])
def test_out_of_range_values_raise_naming_value_and_limit(bad: float) -> None:
    with pytest.raises(MPCError) as error:
        FixedPointEncoder(16).encode(torch.tensor([0.5, bad]))
    message = str(error.value)
    assert "NaN or infinity" in message or ("outside" in message and "7.03687e+13" in message)


def test_fractional_bits_are_checked() -> None:
    with pytest.raises(MPCError, match="fractional bits"):
        FixedPointEncoder(40)
