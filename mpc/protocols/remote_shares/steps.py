"""Party steps of remote shared tensors: joining, sharing, local operations, opening.

The driver is ``coordinator``; what a party keeps and the audience rule are in
``vault``; products are ``dealt_steps`` and ``held_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mpc.protocols.payloads import ring_from_bytes, tensor_bytes, wire_bytes
from mpc.protocols.remote_shares.shapes import local_shape
from mpc.protocols.remote_shares.vault import (
    COORDINATOR,
    MAX_ELEMENTS,
    MAX_PARTIES,
    UsedSerials,
    audience_arg,
    group_of,
    ids_arg,
    layout_args,
    party_index,
    public_ring,
    seal_label,
    shape_arg,
    share_of,
    store_share,
    tensor_id_arg,
)
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
    "DROP",
    "JOIN",
    "KEEP",
    "LOCAL",
    "RECEIVE",
    "REVEAL",
    "SPLIT",
    "local_result",
]

JOIN = "shares.join"
KEEP = "shares.keep"
SPLIT = "shares.split"
ACCEPT = "shares.accept"
LOCAL = "shares.local"
REVEAL = "shares.reveal"
RECEIVE = "shares.receive"
DROP = "shares.drop"

# ------------------------------------------------------------------ every party


def _join(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Fix the session's parties (in order), provider and fractional bits on this
    worker: a party, the provider, or an owner about to share a value it holds."""
    session = session_arg(args)
    parties = ids_arg(args, "parties")
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
    share_value = public_ring(args.get("share"), "share")
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
    if (party.is_own_data(obj_id) or party.was_revealed(obj_id)) and audience != {party.worker_id}:
        # Its own data, or a value opened for it alone: sharing either with a wider
        # audience would let that audience open it.
        raise PartyError(f"{obj_id!r} is this worker's alone: only it may see it opened")
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

    Its result's shape is ``shapes.local_shape`` (tested against this function on
    meta tensors): the coordinator checks it before asking any party, so a shape
    error is raised there, once.
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
    if index == 0:
        return x >> bits
    y = torch.neg(x)  # one allocation, then in place: these tensors run to tens of MB
    y >>= bits
    return y.neg_()


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
        publics["value"] = public_ring(args.get("value"), "value")
    elif op in ("sum", "reshape", "narrow"):
        publics.update(layout_args(args, op))
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
    shares = [value for value, _ in held]
    sizes = {**publics, "value": tuple(publics["value"].shape)} if "value" in publics else publics
    try:
        # The result's size first: a matmul of two allowed inputs can still be far
        # too large to make.
        size = math.prod(local_shape(op, [tuple(v.shape) for v in shares], sizes))
        if size > MAX_ELEMENTS:
            raise PartyError(f"{op} would make {size} elements, more than {MAX_ELEMENTS}")
        result = local_result(op, shares, publics, index)
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
        dropped += party.discard(f"{session}/pending_held/{tensor_id}")
    return {"dropped": dropped}


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
    parties = ids_arg(args, "parties")
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
        REVEAL: _reveal,
        RECEIVE: _receive,
        DROP: _drop,
    }
)
