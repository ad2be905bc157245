"""The share group's shape rules against torch's own, on meta tensors.

``mpc.protocols.remote_shares.shapes`` writes out torch's shape rules so that
neither the coordinator nor a party runs meta tensors (whose first use imports
``torch._dynamo``); for random shapes, each rule must give torch's shape, or
refuse exactly where torch raises.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc.protocols.remote_shares.shapes import bilinear_shape, broadcast, local_shape
from mpc.protocols.remote_shares.steps import local_result

Shape = tuple[int, ...]
sizes = st.integers(min_value=1, max_value=4)
shapes = st.lists(sizes, min_size=0, max_size=4).map(tuple)


def _meta(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def _torch_or_error(fn: Callable[[], torch.Tensor]) -> tuple[int, ...] | str:
    try:
        return tuple(fn().shape)
    except (RuntimeError, ValueError, IndexError):
        return "error"


def _ours_or_error(fn: Callable[[], tuple[int, ...]]) -> tuple[int, ...] | str:
    try:
        return tuple(fn())
    except ValueError:
        return "error"


@settings(max_examples=300, deadline=None)
@given(a=shapes, b=shapes, c=shapes)
def test_broadcast_is_torch_broadcast(a: Shape, b: Shape, c: Shape) -> None:
    expected = _torch_or_error(lambda: _meta(a) + _meta(b) + _meta(c))
    assert _ours_or_error(lambda: broadcast(a, b, c)) == expected


@settings(max_examples=300, deadline=None)
@given(a=shapes, b=shapes)
def test_matmul_shape_is_torch_matmul(a: Shape, b: Shape) -> None:
    expected = _torch_or_error(lambda: _meta(a) @ _meta(b))
    assert _ours_or_error(lambda: bilinear_shape("matmul", a, b)) == expected


@settings(max_examples=300, deadline=None)
@given(
    x=st.tuples(sizes, sizes, st.integers(1, 9), st.integers(1, 9)),
    w=st.tuples(sizes, sizes, st.integers(1, 5), st.integers(1, 5)),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    batched=st.booleans(),
)
def test_conv2d_shape_is_torch_conv2d(
    x: Shape, w: Shape, stride: int, padding: int, batched: bool
) -> None:
    x = x if batched else x[1:]
    expected = _torch_or_error(lambda: F.conv2d(_meta(x), _meta(w), stride=stride, padding=padding))
    ours = _ours_or_error(lambda: bilinear_shape("conv2d", x, w, stride=stride, padding=padding))
    assert ours == expected


@settings(max_examples=300, deadline=None)
@given(
    x=shapes,
    op=st.sampled_from(["sum", "transpose", "narrow", "reshape", "neg"]),
    dims=st.lists(st.integers(-4, 3), max_size=3),
    keepdim=st.booleans(),
    narrow=st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 4)),
    reshape=shapes,
)
def test_local_shapes_are_torch_shapes(
    x: Shape,
    op: str,
    dims: list[int],
    keepdim: bool,
    narrow: tuple[int, int, int],
    reshape: Shape,
) -> None:
    publics: dict[str, object] = {"dims": dims, "keepdim": keepdim, "shape": reshape}
    publics.update(dict(zip(("dim", "start", "length"), narrow, strict=True)))
    expected = _torch_or_error(lambda: local_result(op, [_meta(x)], publics, 0))
    assert _ours_or_error(lambda: local_shape(op, [x], publics)) == expected


def test_pooling_needs_divisible_sizes() -> None:
    assert local_shape("pool_sum", [(2, 3, 8, 6)], {"kernel": 2}) == (2, 3, 4, 3)
    with pytest.raises(ValueError, match="divisible"):
        local_shape("pool_sum", [(2, 3, 7, 6)], {"kernel": 2})
    with pytest.raises(ValueError, match="no local operation"):
        local_shape("relu", [(2,)], {})


def test_shape_checks_import_neither_dynamo_nor_sympy() -> None:
    """Why the rules exist: a party's first checked operation must not import
    ``torch._dynamo`` (≈ 1 s) or sympy, as meta tensors and
    ``torch.broadcast_shapes`` do."""
    code = (
        "import sys, torch\n"
        "from mpc.protocols.remote_shares.tensor import result_shape\n"
        "from mpc.protocols.remote_shares.vault import dealt_shapes\n"
        "v = {'value': torch.zeros(3)}\n"
        "result_shape('add_public', [torch.Size((2, 3))], v)\n"
        "result_shape('lincomb', [torch.Size((2, 3)), torch.Size((1, 3))], {})\n"
        "dealt_shapes('conv2d', [(4, 1, 28, 28), (16, 1, 5, 5)], {'stride': 1, 'padding': 2})\n"
        "dealt_shapes('matmul', [(4, 9), (9, 2)], {})\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'sympy'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
