"""Party steps of remote shared tensors (the driver is ``coordinator``).

Three kinds of worker take part in a *share group* (one session): the parties,
each holding one additive share of every tensor of the group; the provider,
which deals Beaver triples, square pairs and truncation pairs sealed for each
party; and owners, workers that share a value they hold without it passing
through the coordinator. The ring math is ``mpc.beaver``'s, one party at a time.

Vault keys, all under ``<session>/``: ``key`` (X25519 pair, generic ``keygen``);
``group`` (the parties, in order, the provider and the fractional bits, fixed by
``join``); ``v/<id>`` (this party's share of tensor ``id`` and its audience);
``pending/<id>`` (a dealt tuple between its mask and finish steps, used once);
``used`` (the dealt serials this party has consumed, as a :class:`UsedSerials`:
a tuple is never used twice, which would open the difference of two masked values); provider:
``serial`` (the next serial it deals).

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

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from mpc.protocols.payloads import ring_from_bytes, take_secret, tensor_bytes, wire_bytes
from mpc.protocols.sessions import open_from, party_rng, seal_for
from mpc.random import SEED_BYTES, expand
from mpc.ring import FixedPointEncoder
from workers.codec import Value
from workers.party import (
    Party,
    PartyError,
    arg_id,
    arg_int,
    arg_list,
    arg_str,
    check_tensor,
    register_party_steps,
    session_arg,
)

__all__ = [
    "ACCEPT",
    "COORDINATOR",
    "DEAL",
    "DROP",
    "FINISH",
    "JOIN",
    "KEEP",
    "LOCAL",
    "MASK",
    "RECEIVE",
    "REVEAL",
    "SPLIT",
    "dealt_shapes",
    "local_result",
]

JOIN = "shares.join"
KEEP = "shares.keep"
SPLIT = "shares.split"
ACCEPT = "shares.accept"
LOCAL = "shares.local"
DEAL = "shares.deal"
MASK = "shares.mask"
FINISH = "shares.finish"
REVEAL = "shares.reveal"
RECEIVE = "shares.receive"
DROP = "shares.drop"

# The audience name of the coordinator (worker ids cannot start with ':').
COORDINATOR = ":coordinator"
MAX_PARTIES = 16
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 26  # per tensor: bounds what one request can make a party allocate
MAX_DEAL = 256  # tuples per deal request
MAX_SERIAL = 2**32  # tuples per session: a serial is the AEAD purpose of its sealing

# What a dealt tuple serves: its kind and the bilinear map c = op(a, b).
BILINEAR: dict[str, Callable[..., torch.Tensor]] = {
    "mul": torch.mul,
    "matmul": torch.matmul,
    "conv2d": F.conv2d,
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


def _conv_kwargs(args: Mapping[str, Value]) -> dict[str, int]:
    return {
        "stride": arg_int(args, "stride", low=1, high=64),
        "padding": arg_int(args, "padding", low=0, high=64),
    }


def _ids(args: Mapping[str, Value], name: str) -> list[str]:
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


def _public_ring(value: Value, name: str) -> torch.Tensor:
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


# ------------------------------------------------------------------ every party


def _join(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Fix the session's parties (in order), provider and fractional bits on this
    worker: a party, the provider, or an owner about to share a value it holds."""
    session = session_arg(args)
    parties = _ids(args, "parties")
    provider = arg_id(args, "provider")
    bits = arg_int(args, "fractional_bits", low=0, high=30)
    if not 2 <= len(parties) <= MAX_PARTIES or provider in parties:
        raise PartyError(f"a share group has 2..{MAX_PARTIES} parties and a provider apart")
    if party.has(f"{session}/group") or party.ended(session):
        raise PartyError(f"session {session!r} was joined already")
    party.keep(f"{session}/group", (parties, provider, bits))
    party.keep(f"{session}/used", UsedSerials())
    return {"joined": True}


def _keep(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Store a share the coordinator made of its own value."""
    session = session_arg(args)
    party_index(party, session)
    audience = audience_arg(args)
    if COORDINATOR not in audience:
        raise PartyError("a value the coordinator shares is always visible to it")
    share_value = _public_ring(args.get("share"), "share")
    store_share(party, session, tensor_id_arg(args, "id"), share_value.clone(), audience)
    return {"shape": list(share_value.shape)}


def _split(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """An owner shares a value it holds: every other party gets its share sealed.

    All parties but one get a seed their share is expanded from; the last gets
    the value minus the others' shares. The coordinator relays ciphertexts only.
    With ``held`` an owner that is a party keeps the whole value as its share
    and the others are told to keep zero (``held_steps``).
    """
    session = session_arg(args)
    parties, _, bits = group_of(party, session)
    obj_id = arg_str(args, "obj_id")
    tensor_id = tensor_id_arg(args, "id")
    audience = audience_arg(args)
    if party.is_own_data(obj_id) and audience != {party.worker_id}:
        raise PartyError(f"{obj_id!r} is this worker's own data: only it may see it opened")
    value = party.read_object(obj_id)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise PartyError(f"{obj_id!r} is not a float tensor")
    if value.numel() > MAX_ELEMENTS:
        raise PartyError(f"{obj_id!r} is too large to share")
    try:
        encoded = FixedPointEncoder(bits).encode(value.detach())
    except Exception as exc:
        raise PartyError(f"{obj_id!r} cannot be shared: {exc}") from None
    if args.get("held") is True:  # kept whole: the other parties' shares are zero
        if party.worker_id not in parties:
            raise PartyError(
                f"only a party can hold a shared value; {party.worker_id!r} is not one"
            )
        store_share(party, session, tensor_id, encoded, audience)
        return {"sealed": [], "shape": list(encoded.shape)}
    publics = arg_list(args, "public_keys", max_length=MAX_PARTIES)
    if len(publics) != len(parties):
        raise PartyError("one public key per party")
    rng = party_rng(party)
    rest = encoded.clone()
    sealed: list[Value] = []
    last = len(parties) - 1
    for index, (peer, public) in enumerate(zip(parties, publics, strict=True)):
        label = seal_label(
            "split", tensor_id, index, ",".join(sorted(audience)), list(encoded.shape)
        )
        if index < last:
            seed = rng.random_bytes(SEED_BYTES)
            rest -= expand(seed, index, encoded.shape)
            payload = seed
        else:
            payload = tensor_bytes(rest)
        if peer == party.worker_id:
            part = rest if index == last else expand(payload, index, encoded.shape)
            store_share(party, session, tensor_id, part, audience)
            sealed.append(wire_bytes(b""))
        else:
            sealed.append(wire_bytes(seal_for(party, session, peer, public, payload, label=label)))
    return {"sealed": sealed, "shape": list(encoded.shape)}


def _accept(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Open this party's share of an owner's value (a seed, or the last party's tensor)."""
    session = session_arg(args)
    parties, _, _ = group_of(party, session)
    index = party_index(party, session)
    tensor_id = tensor_id_arg(args, "id")
    owner = arg_id(args, "owner")
    audience = audience_arg(args)
    shape = shape_arg(args.get("shape"), "shape")
    data = check_tensor(args.get("sealed"), "sealed", dtype=torch.uint8, ndim=1)
    label = seal_label("split", tensor_id, index, ",".join(sorted(audience)), list(shape))
    payload = open_from(
        party, session, owner, args.get("owner_key"), tensor_bytes(data), label=label
    )
    if index < len(parties) - 1:
        if len(payload) != SEED_BYTES:
            raise PartyError("the owner's seed has the wrong length")
        part = expand(payload, index, shape)
    else:
        part = ring_from_bytes(payload, shape, "the owner's share").clone()
    store_share(party, session, tensor_id, part, audience)
    return {"shape": list(shape)}


def local_result(
    op: str, shares: Sequence[torch.Tensor], publics: Mapping[str, Any], index: int
) -> torch.Tensor:
    """Party ``index``'s share of a local (communication-free) operation.

    The coordinator runs the same function on meta tensors to learn the result's
    shape before asking any party, so a shape error is raised there, once.
    """
    x = shares[0]
    if op in ("add", "sub"):
        return x + shares[1] if op == "add" else x - shares[1]
    if op == "neg":
        return -x
    if op in ("add_public", "mul_public", "matmul_public", "rmatmul_public"):
        value: torch.Tensor = publics["value"]
        if op == "add_public":  # a public value is added by one party only
            return x + value if index == 0 else x + torch.zeros_like(value)
        if op == "mul_public":
            return x * value
        return x @ value if op == "matmul_public" else value @ x
    if op == "sum":
        dims: list[int] = publics["dims"]
        return x.sum(dim=tuple(dims), keepdim=bool(publics["keepdim"])) if dims else x.sum()
    if op == "reshape":
        shape: tuple[int, ...] = tuple(publics["shape"])
        return x.reshape(shape)
    if op == "transpose":
        return x.t().contiguous()
    if op == "narrow":
        dim, start, length = publics["dim"], publics["start"], publics["length"]
        return x.narrow(dim, start, length).contiguous()
    if op == "pool_sum":  # then divided by 2^shift (two parties: local truncation)
        k: int = publics["kernel"]
        if k == 2:  # two strided adds per axis: ~3× faster than the reshaped sum
            rows = x[:, :, 0::2, :] + x[:, :, 1::2, :]
            return _shifted(rows[:, :, :, 0::2] + rows[:, :, :, 1::2], publics, index)
        n, c, h, w = x.shape
        return _shifted(x.reshape(n, c, h // k, k, w // k, k).sum(dim=(3, 5)), publics, index)
    if op == "lincomb":  # Σ c_i · x_i (+ the constant, on party 0), then divided by 2^shift
        coefficients: list[int] = publics["coefficients"]
        total = shares[0] * coefficients[0]
        for share, coefficient in zip(shares[1:], coefficients[1:], strict=True):
            total = total + share * coefficient
        if index == 0:
            total = total + publics["constant"]
        return _shifted(total, publics, index)
    if op == "truncate":
        return _shifted(x, {"shift": publics["bits"]}, index)
    raise PartyError(f"no local operation {op!r}")


def _shifted(x: torch.Tensor, publics: Mapping[str, Any], index: int) -> torch.Tensor:
    """x / 2^shift by two parties' local truncation (SecureML): party 0 floors its
    share, party 1 negates, floors and negates back; off by at most one unit."""
    bits: int = publics.get("shift", 0)
    if not bits:
        return x
    return x >> bits if index == 0 else -((-x) >> bits)


_LOCAL_INPUTS = {"add": 2, "sub": 2}
MAX_TERMS = 4  # shared inputs of one linear combination


def _local(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """A linear operation on this party's shares, stored under ``out``."""
    session = session_arg(args)
    parties, _, _ = group_of(party, session)
    index = party_index(party, session)
    op = arg_str(args, "operation", max_length=32)
    inputs = [
        tensor_id_arg({"id": v}, "id") for v in arg_list(args, "inputs", max_length=MAX_TERMS)
    ]
    if op == "lincomb" and not 1 <= len(inputs) <= MAX_TERMS:
        raise PartyError(f"a linear combination takes 1..{MAX_TERMS} inputs")
    if op != "lincomb" and len(inputs) != _LOCAL_INPUTS.get(op, 1):
        raise PartyError(f"{op!r} takes {_LOCAL_INPUTS.get(op, 1)} inputs")
    shift = arg_int(args, "shift", low=0, high=62) if "shift" in args else 0
    if (op == "truncate" or shift) and len(parties) != 2:
        raise PartyError("local truncation needs exactly two parties")
    held = [share_of(party, session, tensor_id) for tensor_id in inputs]
    publics: dict[str, Any] = {}
    if op in ("add_public", "mul_public", "matmul_public", "rmatmul_public"):
        publics["value"] = _public_ring(args.get("value"), "value")
    elif op == "sum":
        publics["dims"] = [
            arg_int({"d": d}, "d", low=-MAX_DIMS, high=MAX_DIMS - 1)
            for d in arg_list(args, "dims", max_length=MAX_DIMS)
        ]
        publics["keepdim"] = args.get("keepdim") is True
    elif op == "reshape":
        publics["shape"] = shape_arg(args.get("shape"), "shape")
    elif op == "narrow":
        publics["dim"] = arg_int(args, "dim", low=0, high=MAX_DIMS - 1)
        publics["start"] = arg_int(args, "start", low=0, high=2**31)
        publics["length"] = arg_int(args, "length", low=0, high=2**31)
    elif op == "pool_sum":
        publics["kernel"] = arg_int(args, "kernel", low=1, high=64)
        publics["shift"] = shift
    elif op == "lincomb":
        coefficients = arg_list(args, "coefficients", max_length=MAX_TERMS)
        if len(coefficients) != len(inputs):
            raise PartyError("one coefficient per input")
        publics["coefficients"] = [
            arg_int({"c": c}, "c", low=-(2**40), high=2**40) for c in coefficients
        ]
        publics["constant"] = arg_int(args, "constant", low=-(2**62), high=2**62)
        publics["shift"] = shift
    elif op == "truncate":
        publics["bits"] = arg_int(args, "bits", low=0, high=62)
    try:
        result = local_result(op, [value for value, _ in held], publics, index)
    except PartyError:
        raise
    except (RuntimeError, ValueError, IndexError) as exc:
        raise PartyError(f"{op} failed: {exc}") from None
    audience = frozenset.intersection(*(aud for _, aud in held))
    store_share(party, session, tensor_id_arg(args, "out"), result, audience)
    return {"shape": list(result.shape)}


def _drop(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Forget shares the coordinator no longer refers to."""
    session = session_arg(args)
    dropped = 0
    for value in arg_list(args, "ids", max_length=4096):
        tensor_id = tensor_id_arg({"id": value}, "id")
        dropped += party.discard(f"{session}/v/{tensor_id}")
        dropped += party.discard(f"{session}/pending/{tensor_id}")
    return {"dropped": dropped}


# ------------------------------------------------------------------ provider


def dealt_shapes(
    kind: str, shapes: Sequence[tuple[int, ...]], kwargs: Mapping[str, int]
) -> list[tuple[int, ...]]:
    """The shapes of a tuple's parts: (a, b, c) for a product, (a, a²) for a
    square pair, (r, r >> bits) for a truncation pair."""
    if kind in BILINEAR:
        a = torch.empty(shapes[0], device="meta")
        b = torch.empty(shapes[1], device="meta")
        return [shapes[0], shapes[1], tuple(BILINEAR[kind](a, b, **kwargs).shape)]
    return [shapes[0], shapes[0]]


def kind_args(args: Mapping[str, Value]) -> tuple[str, list[tuple[int, ...]], dict[str, int]]:
    kind = arg_str(args, "kind", max_length=16)
    if kind not in _KINDS:
        raise PartyError(f"no dealt tuple of kind {kind!r}")
    shapes = [shape_arg(s, "shapes") for s in arg_list(args, "shapes", max_length=2)]
    if len(shapes) != (2 if kind in BILINEAR else 1):
        raise PartyError(f"{kind!r} takes {2 if kind in BILINEAR else 1} shapes")
    kwargs: dict[str, int] = {}
    if kind == "conv2d":
        kwargs = _conv_kwargs(args)
    elif kind == "trunc":
        kwargs = {"bits": arg_int(args, "bits", low=0, high=62)}
    return kind, shapes, kwargs


def tuple_label(kind: str, shapes: Sequence[tuple[int, ...]], kwargs: Mapping[str, int]) -> str:
    return seal_label("deal", kind, [list(s) for s in shapes], sorted(kwargs.items()))


def _deal(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """``count`` fresh tuples of one kind, each sealed for every party.

    Party i ≥ 1 gets a seed that expands to its shares of every part; party 0
    gets a seed for its shares of the random parts and, explicitly, its share
    of the correlated one (c = op(a, b), a², or r >> bits), which makes the
    parts sum to a valid tuple.
    """
    session = session_arg(args)
    parties, provider, _ = group_of(party, session)
    if party.worker_id != provider:
        raise PartyError(f"{party.worker_id!r} is not the provider of session {session!r}")
    kind, shapes, kwargs = kind_args(args)
    count = arg_int(args, "count", low=1, high=MAX_DEAL)
    publics = arg_list(args, "public_keys", max_length=MAX_PARTIES)
    if len(publics) != len(parties):
        raise PartyError("one public key per party")
    parts = dealt_shapes(kind, shapes, kwargs)
    first = party.secret(f"{session}/serial") if party.has(f"{session}/serial") else 0
    if first + count > MAX_SERIAL:
        raise PartyError(f"session {session!r} has dealt {first} tuples: start a new group")
    party.keep(f"{session}/serial", first + count)
    label = tuple_label(kind, shapes, kwargs)
    tuples: list[Value] = []
    for serial in range(first, first + count):
        seeds = [os.urandom(SEED_BYTES) for _ in parties]
        # Every party's shares of the random parts, from its seed; their sums.
        randoms = []
        for slot in range(len(parts) - 1):
            total = torch.zeros(parts[slot], dtype=torch.int64)
            for seed in seeds:
                total += expand(seed, slot, parts[slot])
            randoms.append(total)
        if kind in BILINEAR:
            correlated = BILINEAR[kind](randoms[0], randoms[1], **kwargs)
        elif kind == "square":
            correlated = randoms[0] * randoms[0]
        else:
            correlated = randoms[0] >> kwargs["bits"]
        slot = len(parts) - 1
        for seed in seeds[1:]:
            correlated -= expand(seed, slot, parts[slot])
        sealed = []
        for index, (peer, public) in enumerate(zip(parties, publics, strict=True)):
            payload = seeds[index] + (tensor_bytes(correlated) if index == 0 else b"")
            sealed.append(
                wire_bytes(
                    seal_for(party, session, peer, public, payload, label=label, purpose=serial)
                )
            )
        tuples.append({"serial": serial, "sealed": sealed})
    return {"tuples": tuples}


def _open_tuple(
    party: Party,
    session: str,
    args: Mapping[str, Value],
    kind: str,
    shapes: Sequence[tuple[int, ...]],
    kwargs: Mapping[str, int],
) -> list[torch.Tensor]:
    """This party's shares of a dealt tuple, checked to be from the provider, for
    this kind and these shapes, and never used before by this party."""
    _, provider, _ = group_of(party, session)
    index = party_index(party, session)
    serial = arg_int(args, "serial", low=0, high=MAX_SERIAL - 1)
    used: UsedSerials = party.secret(f"{session}/used")
    if serial in used:
        raise PartyError(f"dealt tuple {serial} was used already: refused")
    data = check_tensor(args.get("sealed"), "sealed", dtype=torch.uint8, ndim=1)
    payload = open_from(
        party,
        session,
        provider,
        args.get("provider_key"),
        tensor_bytes(data),
        label=tuple_label(kind, shapes, kwargs),
        purpose=serial,
    )
    parts = dealt_shapes(kind, shapes, kwargs)
    seed, rest = payload[:SEED_BYTES], payload[SEED_BYTES:]
    if len(seed) != SEED_BYTES or (index == 0) != bool(rest):
        raise PartyError("the dealt tuple has the wrong length")
    used.add(serial)
    last = len(parts) - 1
    values = [expand(seed, slot, parts[slot]) for slot in range(last)]
    if index == 0:
        values.append(ring_from_bytes(rest, parts[last], "the dealt correction"))
    else:
        values.append(expand(seed, last, parts[last]))
    return values


# ------------------------------------------------------------------ products


def _mask(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Step 1 of a product or truncation: open the dealt tuple and publish this
    party's masked inputs (x_i − a_i, y_i − b_i); keep the tuple for ``finish``."""
    session = session_arg(args)
    kind, shapes, kwargs = kind_args(args)
    out = tensor_id_arg(args, "out")
    inputs = [tensor_id_arg({"id": v}, "id") for v in arg_list(args, "inputs", max_length=2)]
    if len(inputs) != len(shapes):
        raise PartyError(f"{kind!r} takes {len(shapes)} inputs")
    held = [share_of(party, session, tensor_id) for tensor_id in inputs]
    for (value, _), shape in zip(held, shapes, strict=True):
        if tuple(value.shape) != shape:
            raise PartyError(f"an input of shape {tuple(value.shape)} for a tuple of {shape}")
    if party.has(f"{session}/pending/{out}") or party.has(f"{session}/v/{out}"):
        raise PartyError(f"tensor {out!r} is being made already")
    parts = _open_tuple(party, session, args, kind, shapes, kwargs)
    masked = [value - part for (value, _), part in zip(held, parts, strict=False)]
    audience = frozenset.intersection(*(aud for _, aud in held))
    party.keep(f"{session}/pending/{out}", (kind, shapes, kwargs, parts, audience))
    return {"masked": masked}


def _finish(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Step 2: from the opened masked inputs, this party's share of the result.

    Product (Beaver): z_i = c_i + op(e, b_i) + op(a_i, f), plus op(e, f) on party 0.
    Square: z_i = (a²)_i + 2·e·a_i, plus e² on party 0. Truncation pair: z_i =
    (r >> bits)_i, plus (x − r) >> bits on party 0. With ``truncate`` (two
    parties) the product is then truncated locally.
    """
    session = session_arg(args)
    parties, _, _ = group_of(party, session)
    index = party_index(party, session)
    out = tensor_id_arg(args, "out")
    kind, shapes, kwargs, parts, audience = take_secret(party, f"{session}/pending/{out}")
    opened = arg_list(args, "opened", max_length=2)
    if len(opened) != len(shapes):
        raise PartyError(f"{kind!r} needs {len(shapes)} opened values")
    e = opened_arg(opened[0], shapes[0], "opened[0]")
    if kind in BILINEAR:
        f = opened_arg(opened[1], shapes[1], "opened[1]")
        op = BILINEAR[kind]
        a, b, c = parts
        z = c + op(e, b, **kwargs) + op(a, f, **kwargs)
        if index == 0:
            z += op(e, f, **kwargs)
    elif kind == "square":
        a, a2 = parts
        z = a2 + 2 * e * a
        if index == 0:
            z += e * e
    else:
        z = parts[1].clone()
        if index == 0:
            z += e >> kwargs["bits"]
    bits = arg_int(args, "truncate", low=0, high=62)
    if bits:
        if len(parties) != 2:
            raise PartyError("local truncation needs exactly two parties")
        z = local_result("truncate", [z], {"bits": bits}, index)
    store_share(party, session, out, z, audience)
    return {"shape": list(z.shape)}


def opened_arg(value: Value, shape: tuple[int, ...], name: str) -> torch.Tensor:
    tensor = check_tensor(value, name, dtype=torch.int64)
    if tuple(tensor.shape) != shape:
        raise PartyError(f"{name!r} has shape {tuple(tensor.shape)}, expected {shape}")
    return tensor


# ------------------------------------------------------------------ opening


def _reveal(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """This party's share of ``id``, to the coordinator or sealed for one worker,
    only if that recipient is in the tensor's audience."""
    session = session_arg(args)
    index = party_index(party, session)
    tensor_id = tensor_id_arg(args, "id")
    value, audience = share_of(party, session, tensor_id)
    to = arg_str(args, "to")
    if to not in audience:
        raise PartyError(f"{to!r} may not see tensor {tensor_id!r} opened: refused")
    if to == COORDINATOR:
        return {"share": value}
    label = seal_label("reveal", tensor_id, index, list(value.shape))
    sealed = seal_for(party, session, to, args.get("to_key"), tensor_bytes(value), label=label)
    return {"sealed": wire_bytes(sealed)}


def _receive(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Open every party's sealed share of a tensor revealed to this worker; hold the
    decoded value as ``obj_id`` (the coordinator can free it, never fetch it)."""
    session = session_arg(args)
    tensor_id = tensor_id_arg(args, "id")
    parties = _ids(args, "parties")
    bits = arg_int(args, "fractional_bits", low=0, high=30)
    shape = shape_arg(args.get("shape"), "shape")
    sealed = arg_list(args, "sealed", max_length=MAX_PARTIES)
    publics = arg_list(args, "public_keys", max_length=MAX_PARTIES)
    if not 2 <= len(parties) == len(sealed) == len(publics):
        raise PartyError("one sealed share and one public key per party")
    total = torch.zeros(shape, dtype=torch.int64)
    for index, (sender, data, public) in enumerate(zip(parties, sealed, publics, strict=True)):
        ciphertext = tensor_bytes(check_tensor(data, "sealed", dtype=torch.uint8, ndim=1))
        label = seal_label("reveal", tensor_id, index, list(shape))
        opened = open_from(party, session, sender, public, ciphertext, label=label)
        total += ring_from_bytes(opened, shape, f"{sender!r}'s share")
    obj_id = arg_str(args, "obj_id")
    party.hold(obj_id, FixedPointEncoder(bits).decode(total))
    return {"obj_id": obj_id}


register_party_steps(
    {
        JOIN: _join,
        KEEP: _keep,
        SPLIT: _split,
        ACCEPT: _accept,
        LOCAL: _local,
        DEAL: _deal,
        MASK: _mask,
        FINISH: _finish,
        REVEAL: _reveal,
        RECEIVE: _receive,
        DROP: _drop,
    }
)
