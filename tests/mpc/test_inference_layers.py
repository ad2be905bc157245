"""Ring math of encrypted inference against float references."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fl.models import PolyActivation, build_model, get_state
from mpc.inference_layers import (
    MPC_CNN,
    POLY,
    activation_share,
    encode_model,
    expand,
    layer_shapes,
    reference_forward,
    ring_linear,
    sum_pool2,
    truncate_share,
)
from mpc.random import SecureRandom
from mpc.ring import FixedPointEncoder

ENC = FixedPointEncoder()


def _share(secret: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = SecureRandom(bytes(32)).ring_elements(secret.shape)
    return secret - r, r


def test_spec_matches_the_plaintext_model() -> None:
    # Prepare
    state = get_state(build_model("mpc-cnn", seed=0))
    act = PolyActivation()

    # Execute
    shapes = layer_shapes(MPC_CNN, 3)

    # Assert
    for layer in MPC_CNN:
        assert tuple(state[f"{layer.name}.weight"].shape) == layer.weight
    assert (act.a, act.b, act.c) == POLY
    assert shapes[0] == ((3, 1, 28, 28), (3, 16, 28, 28))
    assert shapes[-1] == ((3, 128), (3, 10))


def test_expand_is_deterministic_per_seed_and_stream() -> None:
    # Prepare
    seed = bytes(range(32))

    # Execute
    first, again, other = (
        expand(seed, 1, (1000,)),
        expand(seed, 1, (1000,)),
        expand(seed, 2, (1000,)),
    )

    # Assert
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.dtype == torch.int64 and len(set(first.tolist())) == 1000


def test_truncation_of_shares_divides_within_one_unit() -> None:
    # Prepare
    x = torch.randint(-(2**40), 2**40, (10_000,), dtype=torch.int64)
    x0, x1 = _share(x)

    # Execute
    out = truncate_share(x0, 16, 0) + truncate_share(x1, 16, 1)

    # Assert
    assert int((out - (x >> 16)).abs().max()) <= 1


def test_ring_linear_and_pool_match_float() -> None:
    # Prepare
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    w = torch.randn(16, 1, 5, 5, dtype=torch.float64) / 5

    # Execute
    z = ring_linear(MPC_CNN[0], ENC.encode(x), ENC.encode(w))
    pooled = sum_pool2(z)

    # Assert
    expected = F.conv2d(x, w, padding=2)
    assert torch.allclose(z.double() / 2**32, expected, atol=1e-3)
    assert torch.allclose(pooled.double() / 2**32, 4 * F.avg_pool2d(expected, 2), atol=4e-3)


def test_activation_on_shares_matches_the_polynomial() -> None:
    # Prepare: shares of y, a square pair, and the opened d = y − s.
    y_real = torch.randn(2, 4, 6, 6, dtype=torch.float64) * 2
    y = ENC.encode(y_real)
    s = SecureRandom(bytes([7] * 32)).ring_elements(y.shape)
    s0, s1 = _share(s)
    t0, t1 = _share(s * s)
    y0, y1 = _share(y)
    d = (y0 - s0) + (y1 - s1)

    # Execute
    out = [
        activation_share(yi, d, si.clone(), ti, party=i, pool=pool, encoder=ENC)
        for pool in (False, True)
        for i, (yi, si, ti) in enumerate(((y0, s0, t0), (y1, s1, t1)))
    ]

    # Assert
    act = PolyActivation()(y_real)
    assert torch.allclose(ENC.decode(out[0] + out[1]), act, atol=1e-3)
    assert torch.allclose(ENC.decode(out[2] + out[3]), F.avg_pool2d(act, 2), atol=1e-3)


def test_reference_forward_matches_the_model_and_bounds_failures() -> None:
    # Prepare
    model = build_model("mpc-cnn", seed=1).eval()
    images = torch.randn(5, 1, 28, 28)

    # Execute
    logits, failures = reference_forward(get_state(model), images)
    encoded = encode_model(get_state(model), MPC_CNN, ENC)

    # Assert
    with torch.inference_mode():
        assert torch.allclose(logits, model(images).double(), atol=1e-4)
    assert 0 < failures < 1e-3
    assert len(encoded) == len(MPC_CNN) and encoded[0][1].shape == (16, 1, 1)
