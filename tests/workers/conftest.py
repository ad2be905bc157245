"""Shared helpers for the worker-layer tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fl.models import build_model, get_state


def assert_same_value(actual: Any, expected: Any) -> None:
    """Deep equality where tensors must match exactly, dtype and shape included."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor)
        assert actual.dtype == expected.dtype
        assert actual.shape == expected.shape
        assert torch.equal(actual, expected)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert list(actual) == list(expected)  # order matters for state dicts
        for key in expected:
            assert_same_value(actual[key], expected[key])
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple)
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same_value(a, e)
    elif isinstance(expected, float) and expected != expected:  # NaN
        assert isinstance(actual, float) and actual != actual
    else:
        assert type(actual) is type(expected)
        assert actual == expected


@pytest.fixture(scope="session")
def cnn_state() -> dict[str, torch.Tensor]:
    """McMahan CNN weights: ~1.66 M float32 parameters, the largest state fedsim ships."""
    return get_state(build_model("cnn", seed=0))


@pytest.fixture()
def all_dtypes() -> dict[str, torch.Tensor]:
    """One tensor of every wire dtype, with non-trivial shapes and values."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 4, generator=gen) * 50
    return {
        "float32": base.float(),
        "float64": base.double(),
        "float16": base.half(),
        "bfloat16": base.bfloat16(),
        "int64": base.long(),
        "int32": base.int(),
        "int16": base.short(),
        "int8": base.clamp(-100, 100).to(torch.int8),
        "uint8": base.abs().clamp(0, 255).to(torch.uint8),
        "bool": base > 0,
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 5),
        "noncontiguous": base.t(),
    }
