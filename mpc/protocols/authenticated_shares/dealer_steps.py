"""The provider's steps of an authenticated group: the MAC key, input masks, tuples.

The provider draws the MAC key α and seals each party's share α_i for it
(``setup``); later it deals, sealed per party, authenticated randomness: an
input mask r (``deal_input``: the input's owner gets r, the parties shares of r
and of α·r) and Beaver tuples a, b, c = op(a, b) or a, c = a² (``deal``) with
shares of each part and of its MAC. Party i ≥ 1 gets a seed its parts expand
from; party 0 gets a seed for its shares of the random parts and, explicitly,
its share of the correlated part and of every MAC, which α fixes.

Streams of a party's seed: value k of the tuple is stream k, its MAC share
stream 8 + k (``field_expand``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from mpc.field import field_add, field_expand, field_mul_scalar, field_sub
from mpc.mac import share_mac_key
from mpc.protocols.authenticated_shares.vault import FIELD_KINDS, OpenedLog, field_op, mac_key
from mpc.protocols.payloads import ring_from_bytes, tensor_bytes, wire_bytes
from mpc.protocols.remote_shares.dealt_steps import claim_serials, claim_tuple, require_provider
from mpc.protocols.remote_shares.shapes import bilinear_shape
from mpc.protocols.remote_shares.vault import (
    COORDINATOR,
    MAX_DEAL,
    MAX_ELEMENTS,
    MAX_PARTIES,
    UsedSerials,
    group_of,
    party_index,
    seal_label,
    shape_arg,
)
from mpc.protocols.sessions import open_from, party_rng, seal_for
from mpc.random import SEED_BYTES
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
    "DEAL",
    "DEAL_INPUT",
    "KEY",
    "SETUP",
    "open_mask",
    "open_tuple",
    "tuple_label",
    "tuple_shapes",
]

SETUP = "auth.setup"
KEY = "auth.key"
DEAL_INPUT = "auth.deal_input"
DEAL = "auth.deal"

MAC_STREAM = 8


def tuple_shapes(kind: str, shapes: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The shapes of a tuple's values: (r) for an input mask, (a, a²) for a square,
    (a, b, op(a, b)) for a product; a PartyError if they do not fit."""
    if kind == "input":
        return [shapes[0]]
    if kind == "square":
        return [shapes[0], shapes[0]]
    try:
        out = bilinear_shape(kind, shapes[0], shapes[1])
    except ValueError as exc:
        raise PartyError(f"{kind} of {shapes[0]} by {shapes[1]}: {exc}") from None
    parts = [shapes[0], shapes[1], out]
    if any(_count(p) > MAX_ELEMENTS for p in parts):
        raise PartyError(f"a {kind} tuple of {parts} is too large")
    return parts


def _count(shape: Sequence[int]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def tuple_label(kind: str, shapes: Sequence[Sequence[int]]) -> str:
    return seal_label("auth", kind, [list(s) for s in shapes])


def _kind_args(args: Mapping[str, Value]) -> tuple[str, list[tuple[int, ...]]]:
    kind = arg_str(args, "kind", max_length=16)
    if kind not in (*FIELD_KINDS, "input"):
        raise PartyError(f"no authenticated tuple of kind {kind!r}")
    shapes = [shape_arg(s, "shapes") for s in arg_list(args, "shapes", max_length=2)]
    if len(shapes) != (2 if kind in ("mul", "matmul") else 1):
        raise PartyError(f"{kind!r} takes {2 if kind in ('mul', 'matmul') else 1} shapes")
    return kind, shapes


# ------------------------------------------------------------------ the key


def _setup(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Provider: draw α ≠ 0 and seal α_i for party i (once per session)."""
    session = session_arg(args)
    parties = require_provider(party, session)
    if party.has(f"{session}/alpha"):
        raise PartyError(f"session {session!r} has its MAC key already")
    publics = arg_list(args, "public_keys", max_length=MAX_PARTIES)
    if len(publics) != len(parties):
        raise PartyError("one public key per party")
    alpha, shares = share_mac_key(len(parties), party_rng(party))
    party.keep(f"{session}/alpha", alpha)
    sealed: list[Value] = []
    for index, (peer, public) in enumerate(zip(parties, publics, strict=True)):
        payload = shares[index].to_bytes(8, "little")
        label = seal_label("auth-key", index)
        sealed.append(wire_bytes(seal_for(party, session, peer, public, payload, label=label)))
    return {"sealed": sealed}


def _key(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Party: keep α_i, opened from the provider's sealing (once per session)."""
    session = session_arg(args)
    index = party_index(party, session)
    _, provider, _ = group_of(party, session)
    if party.has(f"{session}/mac_key"):
        raise PartyError(f"session {session!r} has its MAC key already")
    data = check_tensor(args.get("sealed"), "sealed", dtype=torch.uint8, ndim=1)
    payload = open_from(
        party, session, provider, args.get("provider_key"), tensor_bytes(data),
        label=seal_label("auth-key", index),
    )  # fmt: skip
    if len(payload) != 8:
        raise PartyError("the MAC key share has the wrong length")
    party.keep(f"{session}/mac_key", int.from_bytes(payload, "little"))
    party.keep(f"{session}/log", OpenedLog())
    return {"keyed": True}


# ------------------------------------------------------------------ dealing


def _deal_tuple(
    party: Party,
    session: str,
    kind: str,
    shapes: list[tuple[int, ...]],
    serial: int,
    publics: Sequence[Value],
) -> tuple[list[Value], torch.Tensor | None]:
    """One tuple, sealed for every party; for an input mask also r itself."""
    parties = require_provider(party, session)
    alpha: int = party.secret(f"{session}/alpha")
    parts = tuple_shapes(kind, shapes)
    correlated = kind != "input"  # the last value is op(a, b) or a²: party 0 gets it explicitly
    seeds = [os.urandom(SEED_BYTES) for _ in parties]
    values = []
    for slot, shape in enumerate(parts[:-1] if correlated else parts):
        total = field_expand(seeds[0], slot, shape)
        for seed in seeds[1:]:
            total = field_add(total, field_expand(seed, slot, shape))
        values.append(total)
    explicit = []
    if correlated:
        last = len(parts) - 1
        product = field_op(kind, values[0], values[0] if kind == "square" else values[1])
        values.append(product)
        share = product
        for seed in seeds[1:]:
            share = field_sub(share, field_expand(seed, last, parts[last]))
        explicit.append(share)
    for slot, value in enumerate(values):
        mac = field_mul_scalar(value, alpha)
        for seed in seeds[1:]:
            mac = field_sub(mac, field_expand(seed, MAC_STREAM + slot, parts[slot]))
        explicit.append(mac)
    label = tuple_label(kind, shapes)
    sealed: list[Value] = []
    for index, (peer, public) in enumerate(zip(parties, publics, strict=True)):
        payload = seeds[index]
        if index == 0:
            payload += b"".join(tensor_bytes(t) for t in explicit)
        sealed.append(
            wire_bytes(seal_for(party, session, peer, public, payload, label=label, purpose=serial))
        )
    return sealed, (values[0] if kind == "input" else None)


def _deal(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Provider: ``count`` authenticated tuples of a product kind."""
    session = session_arg(args)
    parties = require_provider(party, session)
    kind, shapes = _kind_args(args)
    if kind == "input":
        raise PartyError("input masks are dealt by deal_input")
    count = arg_int(args, "count", low=1, high=MAX_DEAL)
    parts = tuple_shapes(kind, shapes)
    explicit = 8 * (sum(_count(p) for p in parts) + _count(parts[-1]))  # party 0's, per tuple
    if count * explicit > 256 << 20:
        raise PartyError(f"{count} tuples of {kind} exceed 256 MiB a reply")
    publics = arg_list(args, "public_keys", max_length=MAX_PARTIES)
    if len(publics) != len(parties):
        raise PartyError("one public key per party")
    first = claim_serials(party, session, count)
    tuples: list[Value] = []
    for serial in range(first, first + count):
        sealed, _ = _deal_tuple(party, session, kind, shapes, serial, publics)
        tuples.append({"serial": serial, "sealed": sealed})
    return {"tuples": tuples}


def _deal_input(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Provider: a mask r for one input of ``shape``: the parties' shares of r and α·r
    sealed for each, and r for its owner — to the coordinator as is (its own input),
    to a worker sealed."""
    session = session_arg(args)
    parties = require_provider(party, session)
    shape = shape_arg(args.get("shape"), "shape")
    owner = arg_str(args, "owner")
    publics = arg_list(args, "public_keys", max_length=MAX_PARTIES)
    if len(publics) != len(parties):
        raise PartyError("one public key per party")
    serial = claim_serials(party, session, 1)
    sealed, mask = _deal_tuple(party, session, "input", [shape], serial, publics)
    assert mask is not None
    reply: dict[str, Value] = {"serial": serial, "sealed": sealed}
    if owner == COORDINATOR:
        reply["mask"] = mask
    else:
        owner = arg_id({"id": owner}, "id")
        label = seal_label("auth-mask", list(shape))
        reply["owner_sealed"] = wire_bytes(
            seal_for(party, session, owner, args.get("owner_key"), tensor_bytes(mask),
                     label=label, purpose=serial)
        )  # fmt: skip
    return reply


def open_tuple(
    party: Party, session: str, args: Mapping[str, Value], kind: str, shapes: list[tuple[int, ...]]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """This party's (shares, MAC shares) of a dealt tuple's values, checked to be
    sealed by the provider for this kind and these shapes, and never used before."""
    index = party_index(party, session)
    mac_key(party, session)
    payload = claim_tuple(party, session, args, tuple_label(kind, shapes))
    parts = tuple_shapes(kind, shapes)
    correlated = kind != "input"
    seed, rest = payload[:SEED_BYTES], payload[SEED_BYTES:]
    if len(seed) != SEED_BYTES:
        raise PartyError("the dealt tuple has the wrong length")
    explicit_shapes = ([parts[-1]] if correlated else []) + list(parts)
    if index == 0:
        if len(rest) != 8 * sum(_count(s) for s in explicit_shapes):
            raise PartyError("the dealt tuple has the wrong length")
        explicit, offset = [], 0
        for shape in explicit_shapes:
            size = 8 * _count(shape)
            explicit.append(ring_from_bytes(rest[offset : offset + size], shape, "a dealt part"))
            offset += size
    elif rest:
        raise PartyError("the dealt tuple has the wrong length")
    randoms = len(parts) - 1 if correlated else len(parts)
    shares = [field_expand(seed, slot, parts[slot]) for slot in range(randoms)]
    if correlated:
        shares.append(explicit[0] if index == 0 else field_expand(seed, randoms, parts[-1]))
    if index == 0:
        macs = explicit[1:] if correlated else explicit
    else:
        macs = [field_expand(seed, MAC_STREAM + slot, parts[slot]) for slot in range(len(parts))]
    return shares, macs


def open_mask(
    party: Party, session: str, args: Mapping[str, Value], shape: tuple[int, ...]
) -> torch.Tensor:
    """An input's owner: the mask r the provider sealed for it — used once: a second
    input under one mask would open the difference of the two values."""
    # Apart from the party's own record: an owner that is also a party takes its
    # shares of the same r under the same serial.
    if not party.has(f"{session}/used_masks"):
        party.keep(f"{session}/used_masks", UsedSerials())
    label = seal_label("auth-mask", list(shape))
    payload = claim_tuple(party, session, args, label, sealed="owner_sealed", record="used_masks")
    return ring_from_bytes(payload, shape, "the input mask")


register_party_steps({SETUP: _setup, KEY: _key, DEAL_INPUT: _deal_input, DEAL: _deal})
