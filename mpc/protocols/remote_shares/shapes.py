"""Result shapes of the share group's operations, in plain Python.

The coordinator checks every operation's shapes before asking a party, and a
party checks a result's size before making it. Both used to run the operation
on meta tensors, but torch's first meta elementwise operation imports
``torch._dynamo`` (≈ 1.1 s per process, measured on this stack) and
``torch.broadcast_shapes`` imports sympy (≈ 0.3 s); these rules are torch's
own, written out for the few operations the parties run. A ``ValueError``
names what does not fit; the callers turn it into their own error.
``tests/mpc/test_share_shapes.py`` checks them against meta tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["bilinear_shape", "broadcast", "local_shape"]

Shape = tuple[int, ...]


def broadcast(*shapes: Sequence[int]) -> Shape:
    """The broadcast of ``shapes`` (numpy's rule, as torch applies it)."""
    ndim = max((len(s) for s in shapes), default=0)
    out = [1] * ndim
    for shape in shapes:
        for offset, size in enumerate(shape, start=ndim - len(shape)):
            if size != out[offset]:
                if out[offset] != 1 and size != 1:
                    described = " and ".join(str(tuple(s)) for s in shapes)
                    raise ValueError(f"shapes {described} do not broadcast")
                out[offset] = size if out[offset] == 1 else out[offset]
    return tuple(out)


def _matmul(a: Shape, b: Shape) -> Shape:
    if not a or not b:
        raise ValueError("both operands of a matmul need at least one dimension")
    left = (1, a[0]) if len(a) == 1 else a
    right = (b[0], 1) if len(b) == 1 else b
    if left[-1] != right[-2]:
        raise ValueError(f"a matmul of {a} by {b}: inner sizes {left[-1]} and {right[-2]} differ")
    out = (*broadcast(left[:-2], right[:-2]), left[-2], right[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _conv2d(x: Shape, w: Shape, stride: int = 1, padding: int = 0) -> Shape:
    if len(x) not in (3, 4) or len(w) != 4:
        raise ValueError(f"conv2d takes (N, C, H, W) or (C, H, W) by (O, C, kH, kW), got {x}, {w}")
    batch, (channels, height, width) = x[:-3], x[-3:]
    out_channels, in_channels, kh, kw = w
    if channels != in_channels:
        raise ValueError(f"conv2d of {channels} channels by weights for {in_channels}")
    if stride < 1 or padding < 0:
        raise ValueError(f"conv2d needs stride ≥ 1 and padding ≥ 0, got {stride}, {padding}")
    if out_channels < 1 or kh < 1 or kw < 1:
        raise ValueError(f"conv2d weights of shape {w} are empty")
    if height + 2 * padding < kh or width + 2 * padding < kw:
        raise ValueError(f"a {kh}×{kw} kernel is larger than the padded input {x}")
    return (
        *batch,
        out_channels,
        (height + 2 * padding - kh) // stride + 1,
        (width + 2 * padding - kw) // stride + 1,
    )


def bilinear_shape(kind: str, a: Sequence[int], b: Sequence[int], **kwargs: int) -> Shape:
    """The shape of ``kind(a, b)`` for kind mul, matmul or conv2d."""
    if kind == "mul":
        return broadcast(a, b)
    if kind == "matmul":
        return _matmul(tuple(a), tuple(b))
    if kind == "conv2d":
        return _conv2d(tuple(a), tuple(b), **kwargs)
    raise ValueError(f"no bilinear operation {kind!r}")


def _dim(dim: int, ndim: int) -> int:
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise ValueError(f"dimension {dim} is out of range for {ndim} dimensions")
    return dim % max(ndim, 1)


def local_shape(op: str, shapes: Sequence[Sequence[int]], publics: dict[str, Any]) -> Shape:
    """The shape of ``steps.local_result(op, shares, publics, index)`` for shares
    of ``shapes`` (a public ``value`` given by its shape)."""
    x = tuple(shapes[0])
    if op in ("add", "sub", "lincomb"):
        return broadcast(*shapes)
    if op in ("neg", "truncate"):
        return x
    if op in ("add_public", "mul_public"):
        return broadcast(x, publics["value"])
    if op == "matmul_public":
        return _matmul(x, tuple(publics["value"]))
    if op == "rmatmul_public":
        return _matmul(tuple(publics["value"]), x)
    if op == "sum":
        dims = [_dim(d, len(x)) for d in publics["dims"]]
        if not dims:
            return ()
        if len(set(dims)) != len(dims):
            raise ValueError(f"sum over dimensions {publics['dims']} names one twice")
        if publics["keepdim"]:
            return tuple(1 if d in dims else size for d, size in enumerate(x))
        return tuple(size for d, size in enumerate(x) if d not in dims)
    if op == "reshape":
        shape = tuple(publics["shape"])
        if math.prod(shape) != math.prod(x):
            raise ValueError(f"cannot reshape {x} ({math.prod(x)} elements) to {shape}")
        return shape
    if op == "transpose":
        if len(x) > 2:
            raise ValueError(f"t() transposes at most 2 dimensions, not {x}")
        return x[::-1]
    if op == "narrow":
        dim, start, length = publics["dim"], publics["start"], publics["length"]
        if not 0 <= dim < len(x) or start < 0 or length < 0 or start + length > x[dim]:
            raise ValueError(f"narrow({dim}, {start}, {length}) is outside {x}")
        return (*x[:dim], length, *x[dim + 1 :])
    if op == "pool_sum":
        kernel = publics["kernel"]
        if len(x) != 4 or kernel < 1 or x[2] % kernel or x[3] % kernel:
            raise ValueError(f"{kernel}×{kernel} pooling needs (N, C, H, W) divisible by it: {x}")
        return (x[0], x[1], x[2] // kernel, x[3] // kernel)
    raise ValueError(f"no local operation {op!r}")
