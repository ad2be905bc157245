"""Pure ring math of two-party encrypted inference of ``mpc-cnn`` (``mpc.protocols``).

Everything here is a pure function of int64 tensors (elements of Z/2^64,
fixed point with f fractional bits) and of explicit seeds: the party steps in
``mpc.protocols.encrypted_inference.steps`` call it with their vault's contents, and tests call
it directly against float references.

The network (public, as the architecture always is; the weights are secret) is
a list of :class:`Layer`: a linear map (conv 5×5 pad 2 or fully connected),
then optionally the polynomial activation a·x² + b·x + c and a 2×2 average pool.

Truncation (SecureML local truncation, Mohassel & Zhang 2017, Thm. 1): party 0
shifts its share, party 1 negates, shifts and negates back; the result is off
by at most one unit except with probability ≤ |v| / 2^63 for a ring value v.
To keep |v| small every truncation happens at scale 2f (never 3f): x² at 2f is
truncated to f before the coefficient a multiplies it, and the 2×2 average pool
is a sum followed by one shift of f + 2 bits that also divides by 4.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpc.errors import MPCError
from mpc.random import SEED_BYTES, expand
from mpc.ring import FixedPointEncoder

__all__ = [
    "MPC_CNN",
    "POLY",
    "SEED_BYTES",
    "Layer",
    "activation_share",
    "encode_model",
    "expand",
    "layer_shapes",
    "reference_forward",
    "ring_linear",
    "sum_pool2",
    "truncate_share",
]

POLY = (0.125, 0.5, 0.25)  # fl.models.PolyActivation's a, b, c (a test keeps them in sync)


@dataclass(frozen=True)
class Layer:
    """A linear map ``name`` (weights ``name.weight``, ``name.bias``) and what follows it."""

    name: str
    kind: str  # "conv" (5×5, padding ``padding``) or "fc" (input flattened first)
    weight: tuple[int, ...]
    padding: int = 0
    activation: bool = False
    pool: bool = False


# fl.models.MPCFriendlyCNN, layer by layer; (B,1,28,28) → ... → (B,10).
MPC_CNN: tuple[Layer, ...] = (
    Layer("conv1", "conv", (16, 1, 5, 5), padding=2, activation=True, pool=True),
    Layer("conv2", "conv", (32, 16, 5, 5), padding=2, activation=True, pool=True),
    Layer("fc1", "fc", (128, 32 * 7 * 7), activation=True),
    Layer("fc2", "fc", (10, 128)),
)
IMAGE_SHAPE = (1, 28, 28)


def layer_shapes(
    layers: Sequence[Layer], batch: int, image: tuple[int, ...] = IMAGE_SHAPE
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input shape, linear output shape) of every layer for a batch of ``batch`` images."""
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    current: tuple[int, ...] = (batch, *image)
    for layer in layers:
        if layer.kind == "conv":
            _, _, height, width = current
            k = layer.weight[2]
            out: tuple[int, ...] = (
                batch,
                layer.weight[0],
                height + 2 * layer.padding - k + 1,
                width + 2 * layer.padding - k + 1,
            )
        else:
            if math.prod(current[1:]) != layer.weight[1]:
                raise MPCError(f"{layer.name}: input {current} does not fit weight {layer.weight}")
            out = (batch, layer.weight[0])
        shapes.append((current, out))
        current = (*out[:2], out[2] // 2, out[3] // 2) if layer.pool else out
    return shapes


def ring_linear(layer: Layer, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's bilinear map op(x, w) in Z/2^64 (no bias, no truncation).

    torch's int64 conv2d/matmul (no BLAS behind them) are the cost centre here;
    splitting into limbs for exact float64 convolutions was slower still, as
    float64 conv2d has no fast CPU kernel either (docs/mpc-and-he.md, "Encrypted
    evaluation").
    """
    if layer.kind == "conv":
        return F.conv2d(x, w, padding=layer.padding)
    return x.reshape(x.shape[0], -1) @ w.t()


def truncate_share(
    x: torch.Tensor, bits: int, party: int, *, inplace: bool = False
) -> torch.Tensor:
    """Party ``party``'s share of x / 2^bits (two-party local truncation, SecureML).

    Party 0 computes floor(x0 / 2^bits), party 1 ceil(x1 / 2^bits) = −floor(−x1 / 2^bits),
    written as (x1 + 2^bits − 1) >> bits (the two differ only at x1 = −2^63,
    itself a truncation failure). ``inplace`` overwrites ``x``.
    """
    out = x if inplace else x.clone()
    if party != 0:
        out += (1 << bits) - 1
    out >>= bits
    return out


def sum_pool2(x: torch.Tensor) -> torch.Tensor:
    """Sum of each 2×2 window of (B, C, H, W) → (B, C, H/2, W/2); linear, so local on shares."""
    b, c, h, w = x.shape
    pairs = x.reshape(b, c, h, w // 2, 2)
    rows = (pairs[..., 0] + pairs[..., 1]).reshape(b, c, h // 2, 2, w // 2)
    return rows[:, :, :, 0] + rows[:, :, :, 1]  # two adds: faster than .sum(dim=(3, 5))


def activation_share(
    y: torch.Tensor,
    d: torch.Tensor,
    s: torch.Tensor,
    t: torch.Tensor,
    *,
    party: int,
    pool: bool,
    encoder: FixedPointEncoder,
    poly: tuple[float, float, float] = POLY,
) -> torch.Tensor:
    """Party ``party``'s share of pool?(a·y² + b·y + c) at scale f.

    ``y`` is the share of the input (scale f), ``d = y − s`` the opened masked
    input, (``s``, ``t``) the party's shares of a square pair (t = s²). Beaver
    squaring: y² = t + 2·d·s + d² (party 0 adds d²), at scale 2f. ``s`` is
    consumed (overwritten): a square pair is used once.
    """
    bits = encoder.fractional_bits
    a, b, c = (int(encoder.encode(v)) for v in poly)
    out = s.mul_(d).mul_(2).add_(t)  # t + 2·d·s, in s's memory
    if party == 0:
        out += d * d
    truncate_share(out, bits, party, inplace=True)  # y² at scale f
    out.mul_(a).add_(y, alpha=b)  # a·y² + b·y at scale 2f
    if party == 0:
        out += c << bits
    if pool:
        return truncate_share(sum_pool2(out), bits + 2, party, inplace=True)  # /2^f and /4 at once
    return truncate_share(out, bits, party, inplace=True)


def encode_model(
    state: Mapping[str, torch.Tensor], layers: Sequence[Layer], encoder: FixedPointEncoder
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias·2^f) per layer as ring elements; MPCError if ``state`` does not fit.

    The bias is pre-scaled to 2f so it adds to op(x, W) before the truncation.
    """
    encoded = []
    for layer in layers:
        weight = state.get(f"{layer.name}.weight")
        bias = state.get(f"{layer.name}.bias")
        if weight is None or tuple(weight.shape) != layer.weight:
            raise MPCError(f"state lacks {layer.name}.weight of shape {layer.weight}")
        if bias is None or tuple(bias.shape) != (layer.weight[0],):
            raise MPCError(f"state lacks {layer.name}.bias of shape ({layer.weight[0]},)")
        scaled_bias = encoder.encode(bias) << encoder.fractional_bits
        if layer.kind == "conv":
            scaled_bias = scaled_bias.reshape(-1, 1, 1)
        encoded.append((encoder.encode(weight), scaled_bias))
    return encoded


def reference_forward(
    state: Mapping[str, torch.Tensor],
    images: torch.Tensor,
    layers: Sequence[Layer] = MPC_CNN,
    poly: tuple[float, float, float] = POLY,
    *,
    fractional_bits: int = 16,
) -> tuple[torch.Tensor, float]:
    """Float64 logits of the network, and the expected number of local-truncation failures.

    A truncation of ring value v (scale 2f) fails with probability ≤ |v| / 2^63;
    summing that bound over every truncation the protocol makes gives the
    expected number of elements that come out wrong (each spoils one image at most).
    """
    scale2 = float(2 ** (2 * fractional_bits))
    failures = 0.0

    def bound(values: torch.Tensor) -> float:
        return float(values.abs().sum()) * scale2 / 2.0**63

    x = images.to(torch.float64)
    a, b, c = poly
    for layer in layers:
        w = state[f"{layer.name}.weight"].to(torch.float64)
        bias = state[f"{layer.name}.bias"].to(torch.float64)
        if layer.kind == "conv":
            z = F.conv2d(x, w, bias, padding=layer.padding)
        else:
            z = x.reshape(x.shape[0], -1) @ w.t() + bias
        failures += bound(z)
        if layer.activation:
            failures += bound(z * z)
            y = a * z * z + b * z + c
            if layer.pool:
                pooled = sum_pool2(y)
                failures += bound(pooled)
                y = pooled / 4
            else:
                failures += bound(y)
            z = y
        x = z
    return x, failures
