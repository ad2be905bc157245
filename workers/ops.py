"""The allowlist of tensor operations a worker will run for a client.

A remote op or a plan step names an operation by string; the worker looks the
name up in :data:`OPS` and runs nothing else — there is no ``getattr(torch,
name)`` on a name that came over the wire. Ops run under ``torch.no_grad()``
and may not write in place (``out=`` or ``inplace=True``), so an op can only
ever create a new object, never corrupt a stored one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F

from workers.errors import WorkerError

__all__ = ["OPS", "REFLECTED_ALIASES", "TORCH_ALIASES", "apply_op"]


def _tensor_first(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Let a binary torch op take a Python number first (``2 - x``, ``1 / x``).

    The number becomes a 0-dim tensor, which type promotion treats like a
    scalar, so ``2 - x`` has x's dtype exactly as in local PyTorch.
    """

    def op(a: Any, b: Any, **kwargs: Any) -> torch.Tensor:
        if not isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            a = torch.as_tensor(a)
        return fn(a, b, **kwargs)

    op.__name__ = fn.__name__
    return op


OPS: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {
        # elementwise arithmetic
        "add": _tensor_first(torch.add),
        "sub": _tensor_first(torch.sub),
        "mul": _tensor_first(torch.mul),
        "div": _tensor_first(torch.div),
        "pow": torch.pow,
        "neg": torch.neg,
        "abs": torch.abs,
        "exp": torch.exp,
        "log": torch.log,
        "sqrt": torch.sqrt,
        "square": torch.square,
        "clamp": torch.clamp,
        # comparisons and selection
        "eq": torch.eq,
        "ne": torch.ne,
        "gt": torch.gt,
        "ge": torch.ge,
        "lt": torch.lt,
        "le": torch.le,
        "where": torch.where,
        # linear algebra and shapes; Tensor methods accept both reshape(x, 2, 3)
        # and reshape(x, (2, 3)), the two spellings a traced call may record
        "matmul": torch.matmul,
        "t": torch.t,
        "transpose": torch.Tensor.transpose,
        "permute": torch.Tensor.permute,
        "reshape": torch.Tensor.reshape,
        "flatten": torch.Tensor.flatten,
        "squeeze": torch.squeeze,
        "unsqueeze": torch.unsqueeze,
        "cat": torch.cat,
        "stack": torch.stack,
        # reductions
        "sum": torch.sum,
        "mean": torch.mean,
        "amax": torch.amax,
        "amin": torch.amin,
        "argmax": torch.argmax,
        # activations and layers (the functional forms accept every kwarg the
        # torch.* and Tensor.* spellings pass, e.g. relu's ``inplace``)
        "relu": F.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softmax": F.softmax,
        "log_softmax": F.log_softmax,
        "linear": F.linear,
        "conv2d": F.conv2d,
        "max_pool2d": F.max_pool2d,
        "avg_pool2d": F.avg_pool2d,
        "one_hot": F.one_hot,
        # losses
        "cross_entropy": F.cross_entropy,
        "nll_loss": F.nll_loss,
        "mse_loss": F.mse_loss,
    }
)


def _torch_aliases() -> dict[Callable[..., Any], str]:
    """Map every torch spelling of an allowlisted op to its name, for plan tracing.

    Built once from the allowlist's own (fixed) names, so it can only ever
    translate *to* an allowlisted op.
    """
    aliases: dict[Callable[..., Any], str] = {}
    for name in OPS:
        for namespace in (torch, torch.Tensor, F):
            fn = getattr(namespace, name, None)
            if callable(fn) and not isinstance(fn, type):
                aliases[fn] = name
    dunders = {
        "__add__": "add",
        "__sub__": "sub",
        "__mul__": "mul",
        "__truediv__": "div",
        "__matmul__": "matmul",
        "__pow__": "pow",
        "__neg__": "neg",
        "__abs__": "abs",
    }
    for dunder, name in dunders.items():
        aliases[getattr(torch.Tensor, dunder)] = name
    return aliases


TORCH_ALIASES: Mapping[Callable[..., Any], str] = MappingProxyType(_torch_aliases())

# Reflected Tensor operators: ``Tensor.__rsub__(x, y)`` computes ``y - x``, so a
# tracer records the op with its two arguments swapped.
REFLECTED_ALIASES: Mapping[Callable[..., Any], str] = MappingProxyType(
    {
        torch.Tensor.__radd__: "add",
        torch.Tensor.__rsub__: "sub",
        torch.Tensor.__rmul__: "mul",
        torch.Tensor.__rtruediv__: "div",
        torch.Tensor.__rmatmul__: "matmul",
        torch.Tensor.__rpow__: "pow",
    }
)


def apply_op(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """Run allowlisted op ``name``; WorkerError if it is not allowlisted or writes in place."""
    fn = OPS.get(name)
    if fn is None:
        raise WorkerError(f"op {name!r} is not allowlisted")
    if "out" in kwargs or kwargs.get("inplace"):
        raise WorkerError(f"op {name!r}: in-place variants (out=, inplace=True) are not allowed")
    with torch.no_grad():
        return fn(*args, **kwargs)
