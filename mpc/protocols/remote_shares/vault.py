"""What a party of a share group keeps, and how requests name it.

Three kinds of worker take part in a *share group* (one session): the parties,
each holding one additive share of every tensor of the group; the provider,
which deals Beaver triples, square pairs and truncation pairs sealed for each
party; and owners, workers that share a value they hold without it passing
through the coordinator. The steps are in ``steps`` (sharing, local
operations, opening), ``dealt_steps`` (products with dealt tuples) and
``held_steps`` (tensors one party holds whole).

Vault keys, all under ``<session>/``: ``key`` (X25519 pair, generic ``keygen``);
``group`` (the parties, in order, the provider and the fractional bits, fixed by
``join``); ``v/<id>`` (this party's share of tensor ``id`` and its audience);
``pending/<id>`` (a dealt tuple between its mask and finish steps, used once;
``pending_held/<id>`` for a product by a held tensor);
``used`` (the dealt serials this party has consumed, as a :class:`UsedSerials`:
a tuple is never used twice, which would open the difference of two masked
values); provider: ``serial`` (the next serial it deals).

**Audience.** Every shared tensor carries the set of who may see it opened: the
coordinator (:data:`COORDINATOR`) or worker ids. The sharer sets it — for a
worker's own data only that worker — and an operation's result has the
intersection of its inputs' audiences. The parties refuse to reveal a share to
anyone outside it, so a coordinator cannot open what it does not own. It limits
*to whom*, not *which function*: a recipient colluding with the coordinator can
have any function of the inputs computed for it (parties that must agree on the
computation itself need a fixed protocol, such as encrypted inference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from mpc.protocols.remote_shares.shapes import bilinear_shape
from workers.codec import Value
from workers.party import (
    Party,
    PartyError,
    arg_id,
    arg_int,
    arg_list,
    arg_str,
    check_tensor,
)

__all__ = [
    "BILINEAR",
    "COORDINATOR",
    "MAX_DEAL",
    "MAX_DEAL_BYTES",
    "MAX_DIMS",
    "MAX_ELEMENTS",
    "MAX_PARTIES",
    "MAX_SERIAL",
    "UsedSerials",
    "audience_arg",
    "conv_kwargs",
    "deal_count",
    "dealt_shapes",
    "group_of",
    "ids_arg",
    "kind_args",
    "layout_args",
    "opened_arg",
    "party_index",
    "public_ring",
    "ring_conv2d",
    "seal_label",
    "shape_arg",
    "share_of",
    "store_share",
    "tensor_id_arg",
    "tuple_label",
]

COORDINATOR = ":coordinator"
MAX_PARTIES = 16
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 26  # per tensor: bounds what one request can make a party allocate
MAX_DEAL = 256  # tuples per deal request
MAX_DEAL_BYTES = (
    256 << 20
)  # explicit parts per deal reply: bounds what a request makes a provider build
MAX_SERIAL = 2**32  # tuples per session: a serial is the AEAD purpose of its sealing

_COLUMN_BYTES = 4 << 20  # ring_conv2d's unfolded input, per piece


def ring_conv2d(
    x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: int = 0
) -> torch.Tensor:
    """``F.conv2d`` on ring elements (int64), a few images at a time.

    Torch convolves int64 by unfolding the whole batch into one column buffer
    (157 MB for a batch of 250 at mpc-cnn's second layer), allocated and
    faulted in afresh each call; in pieces whose buffer stays within 4 MB the
    same convolution ran 3-4× faster on this 2-core machine (250 images: 27.7 →
    5.6 ms for the first layer, 82 → 24 ms for the second). Same result bits.
    """
    if x.dim() != 4 or w.dim() != 4:
        return F.conv2d(x, w, stride=stride, padding=padding)
    out_h = (x.shape[2] + 2 * padding - w.shape[2]) // stride + 1
    out_w = (x.shape[3] + 2 * padding - w.shape[3]) // stride + 1
    per_image = 8 * w.shape[1] * w.shape[2] * w.shape[3] * max(out_h * out_w, 1)
    chunk = max(1, _COLUMN_BYTES // per_image)
    if chunk >= x.shape[0]:
        return F.conv2d(x, w, stride=stride, padding=padding)
    pieces = [
        F.conv2d(x[i : i + chunk], w, stride=stride, padding=padding)
        for i in range(0, x.shape[0], chunk)
    ]
    return torch.cat(pieces)


# What a dealt tuple serves: its kind and the bilinear map c = op(a, b).
BILINEAR: dict[str, Callable[..., torch.Tensor]] = {
    "mul": torch.mul,
    "matmul": torch.matmul,
    "conv2d": ring_conv2d,
}
_KINDS = (*BILINEAR, "square", "trunc")

# ------------------------------------------------------------------ arguments


def shape_arg(value: Value, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise PartyError(f"{name!r} must be a list of at most {MAX_DIMS} sizes")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 for v in value):
        raise PartyError(f"{name!r} must hold sizes in [0, 2**31)")
    shape = tuple(int(v) for v in value)
    count = 1
    for size in shape:
        count *= size
    if count > MAX_ELEMENTS:
        raise PartyError(f"{name!r} has {count} elements, more than {MAX_ELEMENTS}")
    return shape


def conv_kwargs(args: Mapping[str, Value]) -> dict[str, int]:
    return {
        "stride": arg_int(args, "stride", low=1, high=64),
        "padding": arg_int(args, "padding", low=0, high=64),
    }


def ids_arg(args: Mapping[str, Value], name: str) -> list[str]:
    values = arg_list(args, name, max_length=MAX_PARTIES + 1)
    ids = []
    for index in range(len(values)):
        ids.append(arg_id({"id": values[index]}, "id"))
    if len(set(ids)) != len(ids):
        raise PartyError(f"{name!r} lists a worker twice")
    return ids


def audience_arg(args: Mapping[str, Value]) -> frozenset[str]:
    values = arg_list(args, "audience", max_length=MAX_PARTIES + 2)
    names = set()
    for value in values:
        if value == COORDINATOR:
            names.add(COORDINATOR)
        else:
            names.add(arg_id({"id": value}, "id"))
    return frozenset(names)


def layout_args(args: Mapping[str, Value], op: str) -> dict[str, object]:
    """The public arguments of a local operation that only moves or sums entries:
    ``sum`` (dims, keepdim), ``reshape`` (shape), ``narrow`` (dim, start, length)."""
    if op == "sum":
        dims = [
            arg_int({"d": d}, "d", low=-MAX_DIMS, high=MAX_DIMS - 1)
            for d in arg_list(args, "dims", max_length=MAX_DIMS)
        ]
        return {"dims": dims, "keepdim": args.get("keepdim") is True}
    if op == "reshape":
        return {"shape": shape_arg(args.get("shape"), "shape")}
    if op == "narrow":
        return {
            "dim": arg_int(args, "dim", low=0, high=MAX_DIMS - 1),
            "start": arg_int(args, "start", low=0, high=2**31),
            "length": arg_int(args, "length", low=0, high=2**31),
        }
    return {}


def tensor_id_arg(args: Mapping[str, Value], name: str) -> str:
    return arg_id(args, name)


def group_of(party: Party, session: str) -> tuple[list[str], str, int]:
    """This party's (parties, provider, fractional bits) of ``session``, fixed by ``join``."""
    group: tuple[list[str], str, int] = party.secret(f"{session}/group")
    return group


def party_index(party: Party, session: str) -> int:
    parties, _, _ = group_of(party, session)
    if party.worker_id not in parties:
        raise PartyError(f"{party.worker_id!r} is not a party of session {session!r}")
    return parties.index(party.worker_id)


def share_of(party: Party, session: str, tensor_id: str) -> tuple[torch.Tensor, frozenset[str]]:
    value: tuple[torch.Tensor, frozenset[str]] = party.secret(f"{session}/v/{tensor_id}")
    return value


def store_share(
    party: Party, session: str, tensor_id: str, value: torch.Tensor, audience: frozenset[str]
) -> None:
    key = f"{session}/v/{tensor_id}"
    if party.has(key):
        raise PartyError(f"tensor {tensor_id!r} exists already in session {session!r}")
    party.keep(key, (value, audience))


def public_ring(value: Value, name: str) -> torch.Tensor:
    tensor = check_tensor(value, name, dtype=torch.int64)
    if tensor.numel() > MAX_ELEMENTS:
        raise PartyError(f"{name!r} is too large")
    return tensor


def seal_label(*parts: object) -> str:
    return "shares|" + "|".join(str(p) for p in parts)


class UsedSerials:
    """The serials a party has consumed: all below ``floor``, and the set above it.

    The provider deals serials in order and the coordinator uses them nearly in
    order, so the set stays small however long the session runs.
    """

    def __init__(self) -> None:
        self.floor = 0
        self.above: set[int] = set()

    def __contains__(self, serial: int) -> bool:
        return serial < self.floor or serial in self.above

    def add(self, serial: int) -> None:
        self.above.add(serial)
        while self.floor in self.above:
            self.above.remove(self.floor)
            self.floor += 1


def dealt_shapes(
    kind: str, shapes: Sequence[tuple[int, ...]], kwargs: Mapping[str, int]
) -> list[tuple[int, ...]]:
    """The shapes of a tuple's parts: (a, b, c) for a product, (a, a²) for a
    square pair, (r, r >> bits) for a truncation pair; each within
    :data:`MAX_ELEMENTS` (a product's output is bounded as its inputs are)."""
    if kind in BILINEAR:
        try:
            out = bilinear_shape(kind, shapes[0], shapes[1], **kwargs)
        except ValueError as exc:
            raise PartyError(f"{kind} of {shapes[0]} by {shapes[1]}: {exc}") from None
        parts = [shapes[0], shapes[1], out]
    else:
        parts = [shapes[0], shapes[0]]
    if math.prod(parts[-1]) > MAX_ELEMENTS:
        raise PartyError(f"a {kind} result of shape {parts[-1]} is too large")
    return parts


def deal_count(args: Mapping[str, Value], parts: Sequence[tuple[int, ...]]) -> int:
    """How many tuples a deal request asks for, within :data:`MAX_DEAL` and
    :data:`MAX_DEAL_BYTES` of explicit parts."""
    count = arg_int(args, "count", low=1, high=MAX_DEAL)
    if count * 8 * math.prod(parts[-1]) > MAX_DEAL_BYTES:
        raise PartyError(f"{count} tuples of {parts[-1]} exceed {MAX_DEAL_BYTES >> 20} MiB a reply")
    return count


def kind_args(args: Mapping[str, Value]) -> tuple[str, list[tuple[int, ...]], dict[str, int]]:
    kind = arg_str(args, "kind", max_length=16)
    if kind not in _KINDS:
        raise PartyError(f"no dealt tuple of kind {kind!r}")
    shapes = [shape_arg(s, "shapes") for s in arg_list(args, "shapes", max_length=2)]
    if len(shapes) != (2 if kind in BILINEAR else 1):
        raise PartyError(f"{kind!r} takes {2 if kind in BILINEAR else 1} shapes")
    kwargs: dict[str, int] = {}
    if kind == "conv2d":
        kwargs = conv_kwargs(args)
    elif kind == "trunc":
        kwargs = {"bits": arg_int(args, "bits", low=0, high=62)}
    return kind, shapes, kwargs


def tuple_label(kind: str, shapes: Sequence[tuple[int, ...]], kwargs: Mapping[str, int]) -> str:
    return seal_label("deal", kind, [list(s) for s in shapes], sorted(kwargs.items()))


def opened_arg(value: Value, shape: tuple[int, ...], name: str) -> torch.Tensor:
    tensor = check_tensor(value, name, dtype=torch.int64)
    if tuple(tensor.shape) != shape:
        raise PartyError(f"{name!r} has shape {tuple(tensor.shape)}, expected {shape}")
    return tensor
