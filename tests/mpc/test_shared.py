"""SharedTensor arithmetic against plaintext float64, for 2 and 3 parties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpc.errors import MPCError
from mpc.provider import TrustedDealer
from mpc.random import SecureRandom
from mpc.shared import SharedTensor

UNIT = 2.0**-16


def _pair(parties: int, *shapes: tuple[int, ...]) -> tuple[list[torch.Tensor], list[SharedTensor]]:
    gen = torch.Generator().manual_seed(parties)
    dealer, rng = TrustedDealer(parties), SecureRandom()
    plain = [torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in shapes]
    return plain, [SharedTensor.from_float(p, dealer, rng) for p in plain]


@pytest.mark.parametrize("parties", [2, 3])
def test_linear_operations(parties: int) -> None:
    (x, y), (sx, sy) = _pair(parties, (4, 6), (4, 6))
    assert float(((sx + sy).reconstruct() - (x + y)).abs().max()) <= 2 * UNIT
    assert float(((sx - 1.5).reconstruct() - (x - 1.5)).abs().max()) <= 2 * UNIT
    assert float(((-sx).reconstruct() + x).abs().max()) <= UNIT
    assert float((sx.sum(dim=1).reconstruct() - x.sum(dim=1)).abs().max()) <= 6 * UNIT
    assert float((sx.mean().reconstruct() - x.mean()).abs()) <= 30 * UNIT
    assert torch.allclose((sx * 3).reconstruct(), 3 * x, atol=3 * UNIT)


@pytest.mark.parametrize("parties", [2, 3])
def test_products(parties: int) -> None:
    (x, y, w, img, k), (sx, sy, sw, simg, sk) = _pair(
        parties, (4, 6), (4, 6), (6, 3), (2, 1, 8, 8), (4, 1, 3, 3)
    )
    assert float(((sx * sy).reconstruct() - x * y).abs().max()) <= 16 * UNIT
    assert float((sx.matmul(sw).reconstruct() - x @ w).abs().max()) <= 64 * UNIT
    assert float((sx.matmul(w).reconstruct() - x @ w).abs().max()) <= 64 * UNIT
    conv = simg.conv2d(sk, padding=1).reconstruct()
    assert float((conv - F.conv2d(img, k, padding=1)).abs().max()) <= 64 * UNIT
    assert float(((sx * 0.25).reconstruct() - 0.25 * x).abs().max()) <= 2 * UNIT
    assert float(((sx / 3).reconstruct() - x / 3).abs().max()) <= 4 * UNIT


@pytest.mark.parametrize("parties", [2, 3])
def test_activations_and_pooling(parties: int) -> None:
    (x, img), (sx, simg) = _pair(parties, (5, 5), (2, 3, 8, 8))
    coefficients = [0.25, 0.5, 0.125]  # the MPC-friendly CNN's activation (fl.models)
    expected = 0.25 + 0.5 * x + 0.125 * x * x
    assert float((sx.square().reconstruct() - x * x).abs().max()) <= 16 * UNIT
    assert float((sx.polynomial(coefficients).reconstruct() - expected).abs().max()) <= 16 * UNIT
    cubic = sx.polynomial([0.0, 0.0, 0.0, 1.0]).reconstruct()
    assert float((cubic - x**3).abs().max()) <= 64 * UNIT
    pooled = simg.avg_pool2d(2).reconstruct()
    assert float((pooled - F.avg_pool2d(img, 2)).abs().max()) <= 4 * UNIT


def test_errors() -> None:
    _, (sx,) = _pair(2, (3, 5))
    with pytest.raises(MPCError, match="division by zero"):
        sx / 0
    with pytest.raises(MPCError, match="divisible"):
        SharedTensor.from_float(
            torch.zeros(1, 1, 3, 3), TrustedDealer(2), SecureRandom()
        ).avg_pool2d(2)
