"""Plans: a function traced once into a list of allowlisted ops, run many times.

A plan is *data*, not code: numbered slots (inputs first, then one per step),
and steps ``(op name, args, kwargs)`` whose args are slot references or
constants. It crosses the wire as plain values (:meth:`Plan.to_dict`), and every
construction — by tracing, by ``from_dict`` on a worker — validates each op
name against :data:`workers.ops.OPS`. A worker therefore never executes anything
it could not also have been asked to run op by op; plans only save round trips.

Tracing calls ``fn`` once on placeholders that record each operator, method or
``torch`` function call (see :mod:`workers.operators`). Only calls that map to an
allowlisted op can be traced; data-dependent Python control flow cannot (a
placeholder has no value), and both fail at trace time with a WorkerError.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.codec import Value, check_value
from workers.errors import ProtocolError, WorkerError
from workers.operators import OperatorMixin
from workers.ops import OPS, apply_op

__all__ = ["PLAN_VERSION", "Plan", "PlanStep", "Slot", "trace_plan"]

PLAN_VERSION = 1
_MAX_STEPS = 10_000
_MAX_SLOT_NESTING = 4  # slots may sit in lists (torch.cat([a, b])), not deeper


@dataclass(frozen=True)
class Slot:
    """A reference to an input (index < num_inputs) or to an earlier step's result."""

    index: int


@dataclass(frozen=True)
class PlanStep:
    """One allowlisted op call; ``args``/``kwargs`` hold Slots (maybe in lists) and constants."""

    op: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """A validated op sequence over ``num_inputs`` tensors, returning the ``outputs`` slots."""

    num_inputs: int
    steps: tuple[PlanStep, ...]
    outputs: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.num_inputs <= _MAX_STEPS or len(self.steps) > _MAX_STEPS:
            raise WorkerError(f"plan too large: {self.num_inputs} inputs, {len(self.steps)} steps")
        for i, step in enumerate(self.steps):
            if step.op not in OPS:
                raise WorkerError(f"plan step {i}: op {step.op!r} is not allowlisted")
            available = self.num_inputs + i  # a step sees inputs and earlier results only
            for arg in (*step.args, *step.kwargs.values()):
                _check_arg(arg, available, depth=0)
        if not self.outputs:
            raise WorkerError("plan has no outputs")
        for index in self.outputs:
            if not 0 <= index < self.num_inputs + len(self.steps):
                raise WorkerError(f"plan output slot {index} does not exist")

    def run(self, inputs: Sequence[torch.Tensor]) -> list[Any]:
        """Execute the steps on ``inputs``; return the output slots' values."""
        if len(inputs) != self.num_inputs:
            raise WorkerError(f"plan takes {self.num_inputs} inputs, got {len(inputs)}")
        slots: list[Any] = list(inputs)
        for step in self.steps:
            args = tuple(_resolve(arg, slots) for arg in step.args)
            kwargs = {key: _resolve(arg, slots) for key, arg in step.kwargs.items()}
            slots.append(apply_op(step.op, args, kwargs))
        return [slots[index] for index in self.outputs]

    def run_local(self, *tensors: torch.Tensor) -> list[Any]:
        """Run in this process — what a worker computes, for tests and debugging."""
        return self.run(tensors)

    def to_dict(self) -> dict[str, Value]:
        """Wire form: only plain values (and tensor constants), nothing executable."""
        return {
            "version": PLAN_VERSION,
            "num_inputs": self.num_inputs,
            "steps": [
                {
                    "op": step.op,
                    "args": [_encode_arg(arg) for arg in step.args],
                    "kwargs": {key: _encode_arg(arg) for key, arg in step.kwargs.items()},
                }
                for step in self.steps
            ],
            "outputs": list(self.outputs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Value]) -> Plan:
        """Parse and validate :meth:`to_dict` output; WorkerError on anything malformed."""
        if not isinstance(data, Mapping) or data.get("version") != PLAN_VERSION:
            raise WorkerError(f"not a version {PLAN_VERSION} plan")
        num_inputs, steps, outputs = data.get("num_inputs"), data.get("steps"), data.get("outputs")
        if not _is_int(num_inputs) or not isinstance(steps, list) or not isinstance(outputs, list):
            raise WorkerError("plan needs int 'num_inputs', list 'steps' and list 'outputs'")
        if not all(_is_int(index) for index in outputs):
            raise WorkerError("plan outputs must be slot numbers")
        parsed = []
        for i, step in enumerate(steps):
            if not isinstance(step, Mapping) or set(step) != {"op", "args", "kwargs"}:
                raise WorkerError(f"plan step {i} must hold exactly 'op', 'args', 'kwargs'")
            op, args, kwargs = step["op"], step["args"], step["kwargs"]
            if not isinstance(op, str) or not isinstance(args, list):
                raise WorkerError(f"plan step {i}: bad op or args")
            if not isinstance(kwargs, Mapping):
                raise WorkerError(f"plan step {i}: kwargs must be a map")
            decoded_args = tuple(_decode_arg(arg) for arg in args)
            decoded_kwargs = {key: _decode_arg(arg) for key, arg in kwargs.items()}
            parsed.append(PlanStep(op, decoded_args, decoded_kwargs))
        return cls(int(num_inputs), tuple(parsed), tuple(outputs))  # type: ignore[arg-type]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_arg(arg: Any, available: int, depth: int) -> None:
    if isinstance(arg, Slot):
        if not 0 <= arg.index < available:
            raise WorkerError(f"plan refers to slot {arg.index} before it exists")
    elif isinstance(arg, list | tuple) and depth < _MAX_SLOT_NESTING:
        for item in arg:
            _check_arg(item, available, depth + 1)
    else:
        try:
            check_value(arg)
        except ProtocolError as exc:
            raise WorkerError(f"plan constant: {exc}") from exc


def _resolve(arg: Any, slots: list[Any]) -> Any:
    if isinstance(arg, Slot):
        return slots[arg.index]
    if isinstance(arg, list | tuple):
        return [_resolve(item, slots) for item in arg]
    return arg


def _encode_arg(arg: Any) -> Value:
    # Tagged so that a constant can never be read back as a slot reference.
    if isinstance(arg, Slot):
        return {"slot": arg.index}
    if isinstance(arg, list | tuple):
        return {"list": [_encode_arg(item) for item in arg]}
    return {"const": arg}


def _decode_arg(node: Any) -> Any:
    if isinstance(node, Mapping) and len(node) == 1:
        ((kind, body),) = node.items()
        if kind == "slot" and _is_int(body):
            return Slot(body)
        if kind == "list" and isinstance(body, list):
            return [_decode_arg(item) for item in body]
        if kind == "const":
            return body
    raise WorkerError("plan argument must be a {'slot'|'list'|'const': ...} tag")


# ------------------------------------------------------------------- tracing


class _Tracer:
    def __init__(self, num_inputs: int) -> None:
        self.num_slots = num_inputs
        self.steps: list[PlanStep] = []

    def record(self, op: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Placeholder:
        step = PlanStep(
            op,
            tuple(self._convert(arg) for arg in args),
            {key: self._convert(arg) for key, arg in kwargs.items()},
        )
        self.steps.append(step)
        self.num_slots += 1
        return Placeholder(self, self.num_slots - 1)

    def _convert(self, arg: Any) -> Any:
        if isinstance(arg, Placeholder):
            if arg._tracer is not self:
                raise WorkerError("a placeholder from another trace was used")
            return Slot(arg._index)
        if isinstance(arg, list | tuple):
            return [self._convert(item) for item in arg]
        try:
            check_value(arg)
        except ProtocolError as exc:
            raise WorkerError(f"cannot record constant in a plan: {exc}") from exc
        return arg


class Placeholder(OperatorMixin):
    """Stands for a tensor during tracing; every allowlisted call on it is recorded."""

    def __init__(self, tracer: _Tracer, index: int) -> None:
        self._tracer = tracer
        self._index = index

    def _op(self, op: str, *args: Any, **kwargs: Any) -> Placeholder:
        return self._tracer.record(op, args, kwargs)

    def __bool__(self) -> bool:
        raise WorkerError("data-dependent control flow cannot be traced into a plan")

    def __repr__(self) -> str:
        return f"Placeholder(slot={self._index})"


def trace_plan(fn: Callable[..., Any], num_inputs: int | None = None) -> Plan:
    """Trace ``fn`` once over placeholders; ``num_inputs`` defaults to its positional arity.

    ``fn`` must return one placeholder or a tuple/list of them.
    """
    if num_inputs is None:
        params = inspect.signature(fn).parameters.values()
        num_inputs = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    tracer = _Tracer(num_inputs)
    try:
        result = fn(*(Placeholder(tracer, i) for i in range(num_inputs)))
    except (AttributeError, TypeError) as exc:
        raise WorkerError(f"cannot trace {getattr(fn, '__name__', fn)!r}: {exc}") from exc
    outputs = result if isinstance(result, tuple | list) else (result,)
    slots = []
    for out in outputs:
        if not isinstance(out, Placeholder) or out._tracer is not tracer:
            raise WorkerError(f"a traced function must return placeholders, got {out!r}")
        slots.append(out._index)
    return Plan(num_inputs, tuple(tracer.steps), tuple(slots))
