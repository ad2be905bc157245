"""Python operators, tensor-like methods and torch functions, each mapped to one allowlisted op.

Shared by :class:`~workers.pointer.Pointer` (which forwards each call to its
worker as a ``RunOp``) and the plan tracer's placeholders (which record it), so
``x @ w + b`` or ``F.linear(x, w, b)`` means the same op sequence remotely, in
a plan, and locally. ``torch.*`` / ``F.*`` calls arrive through
``__torch_function__`` (torch's override protocol for tensor-like objects) and
are translated with :data:`workers.ops.TORCH_ALIASES`; any other torch function
raises WorkerError. Subclasses implement only :meth:`OperatorMixin._op`.

``==`` is deliberately *not* overloaded (``eq`` is a method): pointers and
placeholders stay hashable and comparable by identity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from workers.errors import WorkerError
from workers.ops import REFLECTED_ALIASES, TORCH_ALIASES

__all__ = ["OperatorMixin"]


def _method(op: str) -> Callable[..., Any]:
    def method(self: OperatorMixin, *args: Any, **kwargs: Any) -> Any:
        return self._op(op, self, *args, **kwargs)

    method.__name__ = op
    method.__doc__ = f"Allowlisted op ``{op}`` with this object as first argument."
    return method


def _binary(op: str, *, reflected: bool) -> Callable[[Any, Any], Any]:
    def method(self: OperatorMixin, other: Any) -> Any:
        return self._op(op, other, self) if reflected else self._op(op, self, other)

    method.__name__ = f"__r{op}__" if reflected else f"__{op}__"
    return method


def _operands(values: Sequence[Any]) -> Iterator[OperatorMixin]:
    for value in values:
        if isinstance(value, OperatorMixin):
            yield value
        elif isinstance(value, list | tuple):
            yield from _operands(value)


class OperatorMixin:
    """Operators and methods that turn into ``self._op(name, *args, **kwargs)``."""

    def _op(self, op: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        operand = next(_operands((*args, *kwargs.values())), None)
        if operand is None:  # pragma: no cover - torch only calls us with one present
            raise WorkerError(f"no {cls.__name__} among the arguments")
        if func in TORCH_ALIASES:
            return operand._op(TORCH_ALIASES[func], *args, **kwargs)
        if func in REFLECTED_ALIASES and len(args) == 2:
            return operand._op(REFLECTED_ALIASES[func], args[1], args[0], **kwargs)
        name = getattr(func, "__name__", None) or repr(func)
        raise WorkerError(f"{name!r} is not an allowlisted op (see workers.ops.OPS)")

    __add__ = _binary("add", reflected=False)
    __radd__ = _binary("add", reflected=True)
    __sub__ = _binary("sub", reflected=False)
    __rsub__ = _binary("sub", reflected=True)
    __mul__ = _binary("mul", reflected=False)
    __rmul__ = _binary("mul", reflected=True)
    __truediv__ = _binary("div", reflected=False)
    __rtruediv__ = _binary("div", reflected=True)
    __matmul__ = _binary("matmul", reflected=False)
    __rmatmul__ = _binary("matmul", reflected=True)
    __pow__ = _binary("pow", reflected=False)
    __rpow__ = _binary("pow", reflected=True)
    # Rich comparisons other than == (see module docstring); ``0 < x`` reaches
    # ``x.__gt__(0)`` through Python's reflection, which is the same op.
    __gt__ = _binary("gt", reflected=False)
    __ge__ = _binary("ge", reflected=False)
    __lt__ = _binary("lt", reflected=False)
    __le__ = _binary("le", reflected=False)
    __neg__ = _method("neg")
    __abs__ = _method("abs")

    abs = _method("abs")
    exp = _method("exp")
    log = _method("log")
    sqrt = _method("sqrt")
    square = _method("square")
    clamp = _method("clamp")
    eq = _method("eq")
    ne = _method("ne")
    gt = _method("gt")
    ge = _method("ge")
    lt = _method("lt")
    le = _method("le")
    t = _method("t")
    transpose = _method("transpose")
    permute = _method("permute")
    reshape = _method("reshape")
    flatten = _method("flatten")
    squeeze = _method("squeeze")
    unsqueeze = _method("unsqueeze")
    sum = _method("sum")
    mean = _method("mean")
    amax = _method("amax")
    amin = _method("amin")
    argmax = _method("argmax")
    relu = _method("relu")
    sigmoid = _method("sigmoid")
    tanh = _method("tanh")
    softmax = _method("softmax")
    log_softmax = _method("log_softmax")
