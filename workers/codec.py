"""Serialize values for the wire without pickle.

A frame is::

    b"FSM1" | u32 LE header length | UTF-8 JSON header | tensor buffers

The JSON header is ``{"tag": str, "value": tree, "tensors": [descriptor, ...]}``.
The value tree is plain JSON for None, bool, int, float (NaN/inf allowed: a
diverged loss must still be reportable), str and lists; every JSON *object* in the
tree is a one-key tag, so user data can never be mistaken for structure:

- ``{"map": {...}}``  a str-keyed dict (key order kept: model state dicts are ordered)
- ``{"tensor": i}``   the i-th tensor descriptor; indices appear in order 0, 1, 2, ...
- ``{"ref": "id"}``   a :class:`Ref` to an object held by the worker

A descriptor is ``{"dtype", "shape", "offset", "nbytes"}``; buffers are raw
little-endian, C-contiguous, packed back to back in index order, and must fill
the body exactly. The encoder pads the header with JSON whitespace so that the
body starts at a multiple of :data:`BODY_ALIGN` bytes: a receiver that owns the
frame can then use its tensors in place (:func:`decode_frame` ``in_place``).
Decoding validates all of this and raises :class:`ProtocolError` on the first
violation — the decoder is the trust boundary, so nothing it returns
can be anything but the types above. Nothing is ever unpickled: pickle can run
arbitrary code on load, which a worker receiving bytes from a network must never do.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from workers.errors import ProtocolError

__all__ = [
    "BODY_ALIGN",
    "DTYPES",
    "MAGIC",
    "MAX_DEPTH",
    "MAX_HEADER_BYTES",
    "Ref",
    "Value",
    "check_value",
    "decode_frame",
    "encode_frame",
    "encode_frame_writable",
]

MAGIC = b"FSM1"
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a header holds no tensor data, only structure
MAX_DEPTH = 32  # nesting of lists/maps; state dicts need 2
_MAX_TENSORS = 1 << 16
_MAX_DIMS = 16
_PREFIX = struct.Struct("<4sI")
_PICKLE_PROTO = 0x80  # first byte of every pickle of protocol >= 2
# The body's offset in the frame is a multiple of this (a cache line): tensors
# decoded in place are then as aligned as the buffer holding the frame.
BODY_ALIGN = 64

# The only dtypes that cross the wire, by their wire name. No "object" dtype:
# a tensor on the wire is always plain numbers.
DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {
        "float32": torch.float32,
        "float64": torch.float64,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "int64": torch.int64,
        "int32": torch.int32,
        "int16": torch.int16,
        "int8": torch.int8,
        "uint8": torch.uint8,
        "bool": torch.bool,
    }
)
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
    raise ImportError("fedsim's wire format assumes a little-endian host")


@dataclass(frozen=True)
class Ref:
    """A reference to the object stored on the receiving worker under ``obj_id``."""

    obj_id: str


# What may cross the wire: None | bool | int | float | str | Tensor | Ref
# | list[Value] | dict[str, Value] (tuples are accepted on encode and come back as lists).
Value = Any


def check_value(value: Value, *, depth: int = 0) -> None:
    """Raise ProtocolError unless ``value`` can be encoded (cheap: no tensor data is read)."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"value nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, bool | int | float | str | Ref):
        return
    if isinstance(value, torch.Tensor):
        if value.dtype not in _DTYPE_NAMES:
            raise ProtocolError(f"dtype {value.dtype} cannot cross the wire")
        return
    if isinstance(value, list | tuple):
        for item in value:
            check_value(item, depth=depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(f"dict key {key!r} is not a str")
            check_value(item, depth=depth + 1)
        return
    raise ProtocolError(f"a {type(value).__name__} cannot cross the wire")


# ---------------------------------------------------------------- encoding


class _Encoder:
    """Walks a value once, collecting the JSON tree, descriptors and raw buffers."""

    def __init__(self) -> None:
        self.descriptors: list[dict[str, Any]] = []
        self.buffers: list[memoryview] = []
        self.addresses: list[int] = []  # where each buffer's bytes are (encode_frame_writable)
        self.offset = 0

    def tree(self, value: Value, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ProtocolError(f"value nested deeper than {MAX_DEPTH}")
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, torch.Tensor):
            return {"tensor": self.tensor(value)}
        if isinstance(value, Ref):
            return {"ref": value.obj_id}
        if isinstance(value, list | tuple):
            return [self.tree(item, depth + 1) for item in value]
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ProtocolError(f"dict key {key!r} is not a str")
                out[key] = self.tree(item, depth + 1)
            return {"map": out}
        raise ProtocolError(f"a {type(value).__name__} cannot cross the wire")

    def tensor(self, tensor: torch.Tensor) -> int:
        name = _DTYPE_NAMES.get(tensor.dtype)
        if name is None:
            raise ProtocolError(f"dtype {tensor.dtype} cannot cross the wire")
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        # A uint8 view of the tensor's own memory: no per-element Python work and
        # no copy until the single join that builds the frame.
        raw = flat.view(torch.uint8).numpy().data if flat.numel() else memoryview(b"")
        index = len(self.descriptors)
        self.descriptors.append(
            {
                "dtype": name,
                "shape": list(tensor.shape),
                "offset": self.offset,
                "nbytes": raw.nbytes,
            }
        )
        self.buffers.append(raw)
        self.addresses.append(flat.data_ptr())
        self.offset += raw.nbytes
        return index


def _encode_header(tag: str, value: Value) -> tuple[bytes, _Encoder]:
    """The unpadded JSON header of the frame for ``value``, and its tensor buffers."""
    encoder = _Encoder()
    tree = encoder.tree(value, 0)
    header = {"tag": tag, "value": tree, "tensors": encoder.descriptors}
    try:
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
        return text.encode(), encoder
    except (TypeError, ValueError) as exc:  # e.g. lone surrogates in a str
        raise ProtocolError(f"cannot encode header: {exc}") from exc


def _frame_parts(
    header_bytes: bytes, encoder: _Encoder, reserve: int = 0
) -> list[bytes | memoryview]:
    """Prefix, padded header and tensor buffers of a frame, unjoined."""
    # Trailing spaces are JSON whitespace: the body starts BODY_ALIGN-aligned,
    # after at least ``reserve`` spare bytes.
    header_bytes += b" " * (reserve + (-(_PREFIX.size + len(header_bytes) + reserve) % BODY_ALIGN))
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(header_bytes)} bytes exceeds {MAX_HEADER_BYTES}")
    return [_PREFIX.pack(MAGIC, len(header_bytes)), header_bytes, *encoder.buffers]


def encode_frame(tag: str, value: Value, *, reserve: int = 0) -> bytes:
    """Encode ``value`` under the message ``tag`` into one frame.

    ``reserve`` pads the header with that many more spaces, so that a reply
    with a longer header can later be written over this frame in place
    (:func:`encode_frame_writable` ``over``).
    """
    if reserve < 0:
        raise ValueError(f"reserve must be >= 0, got {reserve}")
    return b"".join(_frame_parts(*_encode_header(tag, value), reserve))


def encode_frame_writable(tag: str, value: Value, *, over: bytearray | None = None) -> bytearray:
    """:func:`encode_frame` into a ``bytearray``: a frame for a receiver that may
    decode it in place, such as a virtual worker's reply.

    With ``over``, a frame this process decoded in place (``decode_frame``
    ``in_place``), and when ``value``'s tensors are exactly that frame's body —
    the same bytes, in the same order, as when a worker answers ``Fit`` with
    the state it trained in place — the frame is written over ``over``: only
    its header changes, and no tensor byte is copied. Otherwise, or if the new
    header does not fit before the body, the frame is built anew (one copy).
    """
    header_bytes, encoder = _encode_header(tag, value)
    if over is not None and _write_header_over(over, header_bytes, encoder):
        return over
    return bytearray().join(_frame_parts(header_bytes, encoder))


def _write_header_over(over: bytearray, header: bytes, encoder: _Encoder) -> bool:
    """Make ``over`` the frame of ``header`` and ``encoder``'s tensors if they are its body."""
    if len(over) < _PREFIX.size:
        return False
    magic, header_len = _PREFIX.unpack_from(over)
    if magic != MAGIC:
        return False
    body_start = _PREFIX.size + header_len
    if _PREFIX.size + len(header) > body_start or len(over) - body_start != encoder.offset:
        return False
    base = np.frombuffer(over, dtype=np.uint8).ctypes.data + body_start
    for desc, address in zip(encoder.descriptors, encoder.addresses, strict=True):
        if desc["nbytes"] and address != base + desc["offset"]:
            return False
    padded = header + b" " * (body_start - _PREFIX.size - len(header))
    over[:body_start] = _PREFIX.pack(MAGIC, len(padded)) + padded  # same length: no resize
    return True


# ---------------------------------------------------------------- decoding


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ProtocolError("duplicate key in header")
    return out


def _parse_header(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], memoryview]:
    """Check magic and lengths; return the parsed JSON header and the body."""
    view = memoryview(data)
    if len(view) and view[0] == _PICKLE_PROTO:
        raise ProtocolError("pickled payload rejected: fedsim never unpickles")
    if len(view) < _PREFIX.size:
        raise ProtocolError(f"frame of {len(view)} bytes is shorter than its prefix")
    magic, header_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if header_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"declared header length {header_len} exceeds {MAX_HEADER_BYTES}")
    end = _PREFIX.size + header_len
    if end > len(view):
        raise ProtocolError(f"truncated frame: header needs {end} bytes, got {len(view)}")
    try:
        text = bytes(view[_PREFIX.size : end]).decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"header is not valid JSON: {type(exc).__name__}") from exc
    if "\\u" in text:  # only an escape can make a lone surrogate: no reply could echo it
        _check_text(header, 0)
    if not isinstance(header, dict) or set(header) != {"tag", "value", "tensors"}:
        raise ProtocolError("header must hold exactly 'tag', 'value' and 'tensors'")
    if not isinstance(header["tag"], str) or not isinstance(header["tensors"], list):
        raise ProtocolError("header 'tag' must be a str and 'tensors' a list")
    return header, view[end:]


def _check_text(node: Any, depth: int) -> None:
    """ProtocolError on a str (key or value) that is not valid Unicode text."""
    if depth > MAX_DEPTH + 4:  # the header's own levels above the value
        raise ProtocolError(f"value nested deeper than {MAX_DEPTH}")
    strings: Any = ()
    if isinstance(node, str):
        strings = (node,)
    elif isinstance(node, dict):
        strings = node.keys()
        for item in node.values():
            _check_text(item, depth + 1)
    elif isinstance(node, list):
        for item in node:
            _check_text(item, depth + 1)
    for text in strings:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(f"string {text!r} is not valid Unicode") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode_tensor(
    desc: Any, body: memoryview, expected_offset: int, owner: bytearray | None
) -> torch.Tensor:
    """Validate one descriptor; its bytes copied into a fresh, writable tensor, or
    viewed in place in ``owner`` (the frame's buffer) when given and aligned."""
    if not isinstance(desc, dict) or set(desc) != {"dtype", "shape", "offset", "nbytes"}:
        raise ProtocolError("bad tensor descriptor")
    dtype = DTYPES.get(desc["dtype"]) if isinstance(desc["dtype"], str) else None
    if dtype is None:
        raise ProtocolError(f"dtype {desc['dtype']!r} not allowed")
    shape, offset, nbytes = desc["shape"], desc["offset"], desc["nbytes"]
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise ProtocolError(f"bad tensor shape {shape!r}")
    # Zero-size tensors may declare any other dimension: bound the product of
    # the others too, or torch cannot even make the empty tensor.
    if (
        not all(_is_int(d) and d >= 0 for d in shape)
        or math.prod(max(d, 1) for d in shape) >= 2**62
    ):
        raise ProtocolError(f"bad tensor shape {shape!r}")
    if not (_is_int(offset) and _is_int(nbytes)) or offset != expected_offset:
        raise ProtocolError(f"tensor offset {offset!r} should be {expected_offset}")
    itemsize = dtype.itemsize
    if math.prod(shape) * itemsize != nbytes:
        raise ProtocolError(f"shape {shape} of {desc['dtype']} does not match {nbytes!r} bytes")
    if offset + nbytes > len(body):
        raise ProtocolError(f"tensor bytes {offset}..{offset + nbytes} beyond body {len(body)}")
    if owner is not None and nbytes:
        start = len(owner) - len(body) + offset
        # Through numpy: its array holds an export of the buffer (which pins it
        # against resizing) and the tensor holds the array. torch.frombuffer
        # would hold neither. One array per tensor, not views of one for the
        # whole frame: views of one shared base made training no faster, so the
        # little they save per frame is not worth it (docs/scale.md, "Measured").
        view = torch.from_numpy(np.frombuffer(owner, dtype=np.uint8, count=nbytes, offset=start))
        if view.data_ptr() % itemsize == 0:
            return view.view(dtype).reshape(shape)
    out = torch.empty(nbytes, dtype=torch.uint8)
    if nbytes:
        # One copy out of the frame: the result is writable and never aliases it.
        out.numpy()[:] = np.frombuffer(body, dtype=np.uint8, count=nbytes, offset=offset)
    return out.view(dtype).reshape(shape)


class _Decoder:
    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.tensors = tensors
        self.next_tensor = 0

    def value(self, node: Any, depth: int) -> Value:
        if depth > MAX_DEPTH:
            raise ProtocolError(f"value nested deeper than {MAX_DEPTH}")
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, list):
            return [self.value(item, depth + 1) for item in node]
        if not isinstance(node, dict) or len(node) != 1:
            raise ProtocolError("JSON objects in a value must be one-key tags")
        ((kind, body),) = node.items()
        if kind == "map" and isinstance(body, dict):
            return {key: self.value(item, depth + 1) for key, item in body.items()}
        if kind == "ref" and isinstance(body, str):
            return Ref(body)
        if kind == "tensor" and _is_int(body) and body == self.next_tensor < len(self.tensors):
            self.next_tensor += 1
            return self.tensors[body]
        raise ProtocolError(f"bad value tag {kind!r}")


def decode_frame(
    data: bytes | bytearray | memoryview, *, in_place: bool = False
) -> tuple[str, Value]:
    """Decode one frame into ``(tag, value)``; raise ProtocolError on anything invalid.

    Tensors are fresh copies, unless ``in_place`` and ``data`` is a ``bytearray``:
    then they are views of it (where aligned), which saves a model-sized copy per
    reply. The caller hands the buffer over with that flag — it must not change
    it afterwards (it cannot resize it: the views pin it), and the tensors keep it
    alive. Validation is the same either way.
    """
    header, body = _parse_header(data)
    owner = data if in_place and isinstance(data, bytearray) else None
    descriptors = header["tensors"]
    if len(descriptors) > _MAX_TENSORS:
        raise ProtocolError(f"{len(descriptors)} tensors exceed {_MAX_TENSORS}")
    tensors, offset = [], 0
    for desc in descriptors:
        tensors.append(_decode_tensor(desc, body, offset, owner))
        offset += desc["nbytes"]
    if offset != len(body):
        raise ProtocolError(f"body has {len(body)} bytes, tensors describe {offset}")
    decoder = _Decoder(tensors)
    value = decoder.value(header["value"], 0)
    if decoder.next_tensor != len(tensors):
        raise ProtocolError("tensor descriptors not all referenced exactly once")
    return header["tag"], value
