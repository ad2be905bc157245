"""The base of the worker protocol's messages: typed fields, checked on the way in.

A message is a frozen dataclass whose fields are checked against their
annotations when it is built, in code or from bytes (``workers.messages``
decodes them), so a wrongly typed field is a ProtocolError at the boundary,
not an AttributeError deep in a handler.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any, ClassVar

from workers.codec import Value, encode_frame, encode_frame_writable
from workers.errors import ProtocolError

__all__ = ["Message", "Reply", "Request"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class Message:
    """Base of all messages: field validation on construction, encode/decode."""

    TAG: ClassVar[str]

    def __post_init__(self) -> None:
        # Normalize (lists → tuples, ints → floats) and type-check every field, so
        # a message built in code and one decoded from bytes look exactly alike.
        hints = _hints(type(self))
        for field in fields(self):  # type: ignore[arg-type]
            value = _coerce(hints[field.name], getattr(self, field.name), field.name)
            object.__setattr__(self, field.name, value)

    def encode(self, *, reserve: int = 0) -> bytes:
        """This message as one wire frame (``reserve``: see ``encode_frame``)."""
        return encode_frame(self.TAG, self._fields(), reserve=reserve)

    def encode_writable(self, *, over: bytearray | None = None) -> bytearray:
        """This message as one wire frame in a ``bytearray``, possibly written over
        the frame its tensors were decoded from (see ``encode_frame_writable``)."""
        return encode_frame_writable(self.TAG, self._fields(), over=over)

    def _fields(self) -> dict[str, Value]:
        return {field.name: getattr(self, field.name) for field in fields(self)}  # type: ignore[arg-type]


class Request(Message):
    """A message a worker answers."""


class Reply(Message):
    """A worker's answer to a request."""


_HINTS: dict[type[Message], dict[str, Any]] = {}


def _hints(cls: type[Message]) -> dict[str, Any]:
    """Resolved field annotations of ``cls`` (cached: resolving them is slow)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against a field annotation and return its normalized form."""
    if hint is Any:
        return value  # a wire Value: the codec checks it on encode and decode
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(_coerce(params[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict and isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ProtocolError(f"field {where!r} must have str keys")
        return {key: _coerce(params[1], item, f"{where}.{key}") for key, item in value.items()}
    if origin is types.UnionType:
        for option in params:
            try:
                return _coerce(option, value, where)
            except ProtocolError:
                pass
    if hint is type(None) and value is None:
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint in (int, float) and isinstance(value, int) and not isinstance(value, bool):
        # Every int field is an int64 on the way into torch; beyond that a float
        # overflows and a seed or count cannot be used.
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ProtocolError(f"field {where!r} is out of the int64 range")
        return hint(value)
    if hint is float and isinstance(value, float):
        return value
    if hint is str and isinstance(value, str):
        return value
    raise ProtocolError(f"field {where!r} must be {_name(hint)}, got {type(value).__name__}")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)
