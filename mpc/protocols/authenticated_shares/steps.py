"""Party steps of an authenticated group: inputs, local operations, products, checks.

Every tensor is a pair (share, MAC share) in F_p (``vault``). Inputs follow
SPDZ: the owner publishes ε = x − r for a mask r the provider dealt, and the
parties derive ⟨x⟩ = ⟨r⟩ + ε (``mpc.mac.input_shares``). Linear operations act
on both halves; a public constant c is added to party 0's share and as c·α_i to
every MAC share. Products are Beaver's with authenticated tuples. Each opened
value — a product's masked inputs, a value revealed to the coordinator — is
logged with this party's MAC share of it, and ``check`` answers the batched
MAC check (DKLPSS13's MACCheck) over everything logged since the last one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from mpc.errors import MPCError
from mpc.field import (
    P,
    field_add,
    field_encode,
    field_expand,
    field_matmul,
    field_mul,
    field_mul_scalar,
    field_neg,
    field_sub,
    field_sum,
)
from mpc.mac import input_shares
from mpc.protocols.authenticated_shares.dealer_steps import open_mask, open_tuple
from mpc.protocols.authenticated_shares.vault import (
    FIELD_KINDS,
    OpenedLog,
    field_arg,
    field_op,
    mac_key,
    read_pair,
    store_pair,
)
from mpc.protocols.payloads import take_secret
from mpc.protocols.remote_shares.shapes import local_shape
from mpc.protocols.remote_shares.vault import (
    MAX_ELEMENTS,
    layout_args,
    party_index,
    shape_arg,
    tensor_id_arg,
)
from mpc.random import SEED_BYTES
from workers.codec import Value
from workers.party import (
    Party,
    PartyError,
    arg_int,
    arg_list,
    arg_str,
    check_tensor,
    register_party_steps,
    session_arg,
)

__all__ = ["CHECK", "DROP", "FINISH", "INPUT", "LOCAL", "MASK", "MASK_INPUT", "OPEN"]

INPUT = "auth.input"
MASK_INPUT = "auth.mask_input"
LOCAL = "auth.local"
MASK = "auth.mask"
FINISH = "auth.finish"
OPEN = "auth.open"
CHECK = "auth.check"
DROP = "auth.drop"


def _log(party: Party, session: str) -> OpenedLog:
    log: OpenedLog = party.secret(f"{session}/log")  # made with the MAC key
    return log


# ------------------------------------------------------------------ inputs


def _mask_input(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """An input's owner: ε = x − r for its value ``obj_id``, encoded with
    ``fractional_bits``; ε is uniform, so the coordinator and parties learn nothing."""
    session = session_arg(args)
    obj_id = arg_str(args, "obj_id")
    if party.is_own_data(obj_id) or party.was_revealed(obj_id):
        # The coordinator may open what is computed from an input: a worker's own
        # data, or a value opened for it alone, must not be one.
        raise PartyError(
            f"{obj_id!r} is this worker's alone: it cannot be shared to the coordinator"
        )
    value = party.read_object(obj_id)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise PartyError(f"{obj_id!r} is not a float tensor")
    if value.numel() > MAX_ELEMENTS:
        raise PartyError(f"{obj_id!r} is too large to share")
    try:
        encoded = field_encode(value.detach(), arg_int(args, "fractional_bits", low=0, high=32))
    except MPCError as exc:
        raise PartyError(f"{obj_id!r} cannot be shared: {exc}") from None
    shape = shape_arg(args.get("shape"), "shape")
    if tuple(encoded.shape) != shape:
        raise PartyError(f"{obj_id!r} has shape {tuple(encoded.shape)}, not the {shape} asked for")
    mask = open_mask(party, session, args, shape)
    return {"eps": field_sub(encoded, mask), "shape": list(encoded.shape)}


def _input(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """A party: ⟨x⟩ = ⟨r⟩ + ε from the published ε and its dealt shares of r, α·r."""
    session = session_arg(args)
    index = party_index(party, session)
    alpha_share = mac_key(party, session)
    shape = shape_arg(args.get("shape"), "shape")
    eps = field_arg(args.get("eps"), "eps", shape)
    (r,), (mac_r,) = open_tuple(party, session, args, "input", [shape])
    share, mac = input_shares(eps, r, mac_r, alpha_share, index)
    store_pair(party, session, tensor_id_arg(args, "id"), share, mac)
    return {"shape": list(shape)}


# ------------------------------------------------------------------ local


def _sum_dims(x: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    if not dims:
        return field_sum(x)
    for dim in sorted({d % max(x.dim(), 1) for d in dims}, reverse=True):
        x = field_sum(x, dim)
        if keepdim:
            x = x.unsqueeze(dim)
    return x


def _linear(op: str, pairs: list[tuple[torch.Tensor, torch.Tensor]], publics: dict[str, Any],
            index: int, alpha_share: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(share, MAC share) of a linear operation: both halves alike, but a public
    constant, which party 0 adds to its share and every party as c·α_i to its MAC."""
    (x, mx) = pairs[0]
    if op in ("add", "sub"):
        y, my = pairs[1]
        fn = field_add if op == "add" else field_sub
        return fn(x, y), fn(mx, my)
    if op == "neg":
        return field_neg(x), field_neg(mx)
    if op == "add_public":
        c: torch.Tensor = publics["value"]
        share = field_add(x, c) if index == 0 else field_add(x, torch.zeros_like(c))
        return share, field_add(mx, field_mul_scalar(c, alpha_share))
    if op == "mul_public":
        return field_mul(x, publics["value"]), field_mul(mx, publics["value"])
    if op == "matmul_public":
        return field_matmul(x, publics["value"]), field_matmul(mx, publics["value"])
    if op == "rmatmul_public":
        return field_matmul(publics["value"], x), field_matmul(publics["value"], mx)
    if op == "sum":
        dims, keepdim = publics["dims"], publics["keepdim"]
        return _sum_dims(x, dims, keepdim), _sum_dims(mx, dims, keepdim)
    if op == "reshape":
        return x.reshape(publics["shape"]), mx.reshape(publics["shape"])
    if op == "transpose":
        return x.t().contiguous(), mx.t().contiguous()
    if op == "narrow":
        dim, start, length = publics["dim"], publics["start"], publics["length"]
        return (x.narrow(dim, start, length).contiguous(),
                mx.narrow(dim, start, length).contiguous())  # fmt: skip
    raise PartyError(f"no local operation {op!r}")


def _local(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """A linear operation on this party's (share, MAC share) pairs, stored under ``out``."""
    session = session_arg(args)
    index = party_index(party, session)
    alpha_share = mac_key(party, session)
    op = arg_str(args, "operation", max_length=32)
    inputs = [tensor_id_arg({"id": v}, "id") for v in arg_list(args, "inputs", max_length=2)]
    if len(inputs) != (2 if op in ("add", "sub") else 1):
        raise PartyError(f"{op!r} takes {2 if op in ('add', 'sub') else 1} inputs")
    publics: dict[str, Any] = {}
    if op in ("add_public", "mul_public", "matmul_public", "rmatmul_public"):
        publics["value"] = field_arg(args.get("value"), "value")
    else:
        publics.update(layout_args(args, op))
    pairs = [read_pair(party, session, tensor_id) for tensor_id in inputs]
    sizes = {**publics, "value": tuple(publics["value"].shape)} if "value" in publics else publics
    try:
        size = math.prod(local_shape(op, [tuple(x.shape) for x, _ in pairs], sizes))
        if size > MAX_ELEMENTS:
            raise PartyError(f"{op} would make {size} elements, more than {MAX_ELEMENTS}")
        share, mac = _linear(op, pairs, publics, index, alpha_share)
    except PartyError:
        raise
    except (RuntimeError, ValueError, IndexError, MPCError) as exc:
        raise PartyError(f"{op} failed: {exc}") from None
    store_pair(party, session, tensor_id_arg(args, "out"), share, mac)
    return {"shape": list(share.shape)}


# ------------------------------------------------------------------ products


def _mask(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Step 1 of a product: publish x_i − a_i (and y_i − b_i); keep the tuple and the
    MAC shares of the masked values, which are logged once they are opened."""
    session = session_arg(args)
    kind = arg_str(args, "kind", max_length=16)
    if kind not in FIELD_KINDS:
        raise PartyError(f"no authenticated product {kind!r}")
    out = tensor_id_arg(args, "out")
    inputs = [tensor_id_arg({"id": v}, "id") for v in arg_list(args, "inputs", max_length=2)]
    if len(inputs) != (1 if kind == "square" else 2):
        raise PartyError(f"{kind!r} takes {1 if kind == 'square' else 2} inputs")
    if party.has(f"{session}/pending_auth/{out}") or party.has(f"{session}/a/{out}"):
        raise PartyError(f"tensor {out!r} is being made already")
    pairs = [read_pair(party, session, tensor_id) for tensor_id in inputs]
    shapes = [tuple(x.shape) for x, _ in pairs]
    shares, macs = open_tuple(party, session, args, kind, shapes)
    masked = [field_sub(x, a) for (x, _), a in zip(pairs, shares, strict=False)]
    masked_macs = [field_sub(mx, ma) for (_, mx), ma in zip(pairs, macs, strict=False)]
    party.keep(f"{session}/pending_auth/{out}", (kind, shapes, shares, macs, masked_macs))
    return {"masked": masked}


def _finish(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Step 2: from the opened d = x − a (and e = y − b), this party's pair of the product:

        z_i = c_i + op(d, b_i) + op(a_i, e) [+ op(d, e) on party 0]
        m(z)_i = m(c)_i + op(d, m(b)_i) + op(m(a)_i, e) + α_i·op(d, e)

    (a square: z_i = c_i + 2·d·a_i [+ d² on party 0]); d and e are logged with
    this party's MAC shares of them for the next check.
    """
    session = session_arg(args)
    index = party_index(party, session)
    alpha_share = mac_key(party, session)
    out = tensor_id_arg(args, "out")
    kind, shapes, shares, macs, masked_macs = take_secret(party, f"{session}/pending_auth/{out}")
    opened_values = arg_list(args, "opened", max_length=2)
    if len(opened_values) != len(shapes):
        raise PartyError(f"{kind!r} needs {len(shapes)} opened values")
    opened = [
        field_arg(value, f"opened[{i}]", shape)
        for i, (value, shape) in enumerate(zip(opened_values, shapes, strict=True))
    ]
    log = _log(party, session)
    for value, mac in zip(opened, masked_macs, strict=True):
        log.add(value, mac)
    d = opened[0]
    if kind == "square":
        a, c = shares
        ma, mc = macs
        cross = field_mul_scalar(field_mul(d, a), 2)
        z = field_add(c, cross)
        mz = field_add(mc, field_mul_scalar(field_mul(d, ma), 2))
        dd = field_mul(d, d)
    else:
        e = opened[1]
        a, b, c = shares
        ma, mb, mc = macs
        z = field_add(field_add(c, field_op(kind, d, b)), field_op(kind, a, e))
        mz = field_add(field_add(mc, field_op(kind, d, mb)), field_op(kind, ma, e))
        dd = field_op(kind, d, e)
    if index == 0:
        z = field_add(z, dd)
    mz = field_add(mz, field_mul_scalar(dd, alpha_share))
    store_pair(party, session, out, z, mz)
    return {"shape": list(z.shape)}


# ------------------------------------------------------------------ opening


def _open(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """This party's share of ``id``, to the coordinator (every value of an
    authenticated group is the coordinator's to open); its MAC share waits for
    the opened value at the next check."""
    session = session_arg(args)
    party_index(party, session)
    tensor_id = tensor_id_arg(args, "id")
    share, mac = read_pair(party, session, tensor_id)
    party.keep(f"{session}/pending_open/{tensor_id}", mac)  # again, if asked again
    return {"share": share}


def _check(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """σ_i = Σ_k ρ_k·(m_i,k − α_i·y_k) over every opening since the last check: the
    values of ``outputs`` (the coordinator's openings, with what it opened) and the
    logged masked values. ρ comes from ``seed``, which the coordinator draws after
    every value was opened; the log is then empty whatever the outcome."""
    session = session_arg(args)
    party_index(party, session)
    alpha_share = mac_key(party, session)
    log = _log(party, session)
    for item in arg_list(args, "outputs", max_length=4096):
        if not isinstance(item, Mapping):
            raise PartyError("an output is a map of id and value")
        tensor_id = tensor_id_arg(item, "id")
        mac: torch.Tensor = take_secret(party, f"{session}/pending_open/{tensor_id}")
        log.add(field_arg(item.get("value"), "value", tuple(mac.shape)), mac)
    seed = bytes(check_tensor(args.get("seed"), "seed", dtype=torch.uint8, ndim=1).tolist())
    if len(seed) != SEED_BYTES:
        raise PartyError(f"the check's seed has {SEED_BYTES} bytes")
    coefficients = [field_expand(seed, k, (v.numel(),)) for k, (v, _) in enumerate(log.entries)]
    return {"sigma": log.sigma(alpha_share, coefficients), "checked": len(coefficients)}


def _drop(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Forget pairs the coordinator no longer refers to."""
    session = session_arg(args)
    dropped = 0
    for value in arg_list(args, "ids", max_length=4096):
        tensor_id = tensor_id_arg({"id": value}, "id")
        for prefix in ("a", "pending_auth", "pending_open"):
            dropped += party.discard(f"{session}/{prefix}/{tensor_id}")
    return {"dropped": dropped}


assert P > 2**60  # the check's σ is a Python int below p: it travels as an int64
register_party_steps(
    {
        INPUT: _input,
        MASK_INPUT: _mask_input,
        LOCAL: _local,
        MASK: _mask,
        FINISH: _finish,
        OPEN: _open,
        CHECK: _check,
        DROP: _drop,
    }
)
