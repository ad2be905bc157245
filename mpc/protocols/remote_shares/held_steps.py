"""Party steps for tensors one party holds whole, and products by them.

A party that owns a value can share it *held*: it keeps the whole encoding as
its share and every other party keeps zero — a valid additive sharing that
costs no split and tells the others nothing. A product x ⊗ W by a held W
(a model owner's weights) then needs one ring operation online instead of
Beaver's four: the provider draws a mask b for W once and gives it to the
holder j, which opens f = W − b once (``fix``); for each product the provider
deals a_i to every other party i and shares c = op(Σ a_i, b) among all, and

    party i ≠ j:  publishes e_i = x_i − a_i;  z_i = op(a_i, f) + c_i (while j works)
    holder j:     z_j = op(x_j + Σ e_i, W) + c_j

so Σ z = op(x, W). It is Beaver's product with the holder's share of W taken
as W itself; reusing b is sound because f is opened once and W never
changes, and every product has fresh a and c. (fedsim's encrypted inference
used the same construction for its fixed two roles.) The coordinator sees f
and the e_i, masked by b and a, which only the provider knows.

Vault keys under ``<session>/``: ``fixed/<id>/b`` and ``fixed/<id>/f`` (the
holder's mask of held tensor ``id`` and the f it opened), ``fixed/<id>/f`` (the
others' copy of f); provider: ``fixed/<id>`` (the holder, the seed and b,
kept to deal every product's c for that holder only).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from mpc.protocols.payloads import ring_from_bytes, take_secret, tensor_bytes, wire_bytes
from mpc.protocols.remote_shares.dealt_steps import claim_serials, claim_tuple, require_provider
from mpc.protocols.remote_shares.steps import local_result
from mpc.protocols.remote_shares.vault import (
    BILINEAR,
    MAX_PARTIES,
    audience_arg,
    deal_count,
    dealt_shapes,
    group_of,
    kind_args,
    opened_arg,
    party_index,
    seal_label,
    shape_arg,
    share_of,
    store_share,
    tensor_id_arg,
)
from mpc.protocols.sessions import open_from, seal_for
from mpc.random import SEED_BYTES, expand
from workers.codec import Value
from workers.party import (
    Party,
    PartyError,
    arg_id,
    arg_int,
    arg_list,
    check_tensor,
    register_party_steps,
    session_arg,
)

__all__ = [
    "DEAL_FIXED",
    "DEAL_HELD",
    "FINISH_HELD",
    "FINISH_MASKED",
    "FIX",
    "FIXED",
    "MASK_HELD",
    "ZEROS",
]

ZEROS = "shares.zeros"
DEAL_FIXED = "shares.deal_fixed"
FIX = "shares.fix"
FIXED = "shares.fixed"
DEAL_HELD = "shares.deal_held"
MASK_HELD = "shares.mask_held"
FINISH_MASKED = "shares.finish_masked"
FINISH_HELD = "shares.finish_held"


def _zeros(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """This party's share of a tensor another party holds whole: zero (no memory)."""
    session = session_arg(args)
    party_index(party, session)
    shape = shape_arg(args.get("shape"), "shape")
    zero = torch.zeros((), dtype=torch.int64).expand(shape)
    store_share(party, session, tensor_id_arg(args, "id"), zero, audience_arg(args))
    return {"shape": list(shape)}


def _holder(party: Party, session: str, args: Mapping[str, Value]) -> tuple[str, int]:
    parties, _, _ = group_of(party, session)
    holder = arg_id(args, "holder")
    if holder not in parties:
        raise PartyError(f"{holder!r} is not a party of session {session!r}")
    return holder, parties.index(holder)


def _deal_fixed(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Provider: draw the mask b of held tensor ``id`` once, for its holder; seal its
    seed for the holder (again, the same seed, if a first delivery was lost)."""
    session = session_arg(args)
    require_provider(party, session)
    tensor_id = tensor_id_arg(args, "id")
    shape = shape_arg(args.get("shape"), "shape")
    holder, _ = _holder(party, session, args)
    key = f"{session}/fixed/{tensor_id}"
    if party.has(key):
        kept_holder, seed, b = party.secret(key)
        if kept_holder != holder or tuple(b.shape) != shape:
            raise PartyError(f"the mask of {tensor_id!r} was dealt already, for another holder")
    else:
        seed = os.urandom(SEED_BYTES)
        party.keep(key, (holder, seed, expand(seed, 0, shape)))
    label = seal_label("fixed", tensor_id, list(shape))
    sealed = seal_for(party, session, holder, args.get("holder_key"), seed, label=label)
    return {"sealed": wire_bytes(sealed)}


def _fix(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Holder: open the mask b of its held tensor and publish f = W − b — once: asked
    again, it answers the same f (a second b would open b − b')."""
    session = session_arg(args)
    _, provider, _ = group_of(party, session)
    party_index(party, session)
    tensor_id = tensor_id_arg(args, "id")
    value, _ = share_of(party, session, tensor_id)
    key = f"{session}/fixed/{tensor_id}/f"
    if party.has(key):
        return {"f": party.secret(key)}
    data = check_tensor(args.get("sealed"), "sealed", dtype=torch.uint8, ndim=1)
    seed = open_from(
        party, session, provider, args.get("provider_key"), tensor_bytes(data),
        label=seal_label("fixed", tensor_id, list(value.shape)),
    )  # fmt: skip
    if len(seed) != SEED_BYTES:
        raise PartyError("the provider's seed has the wrong length")
    b = expand(seed, 0, value.shape)
    f = value - b
    party.keep(f"{session}/fixed/{tensor_id}/b", b)
    party.keep(key, f)
    return {"f": f}


def _fixed(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Another party: keep the opened f of held tensor ``id``."""
    session = session_arg(args)
    party_index(party, session)
    tensor_id = tensor_id_arg(args, "id")
    value, _ = share_of(party, session, tensor_id)
    f = opened_arg(args.get("f"), tuple(value.shape), "f")
    if party.has(f"{session}/fixed/{tensor_id}/b"):
        raise PartyError(f"{party.worker_id!r} holds {tensor_id!r}: it made f itself")
    key = f"{session}/fixed/{tensor_id}/f"
    if party.has(key):
        if not torch.equal(party.secret(key), f):
            raise PartyError(f"{tensor_id!r} was fixed already, with another f")
        return {"fixed": True}
    party.keep(key, f.clone())
    return {"fixed": True}


def _mask_of(party: Party, session: str, w: str) -> tuple[str, torch.Tensor]:
    """Provider: the holder of held tensor ``w`` and its mask b, as dealt."""
    holder, _, b = party.secret(f"{session}/fixed/{w}")
    return holder, b


def _held_label(kind: str, shapes: list[tuple[int, ...]], kwargs: Mapping[str, int], w: str) -> str:
    return seal_label("held", kind, [list(s) for s in shapes], sorted(kwargs.items()), w)


def _deal_held(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Provider: ``count`` tuples for products by held tensor ``w``: a seed (a_i, c_i)
    for every party but the holder, and the holder's c_j explicitly."""
    session = session_arg(args)
    parties = require_provider(party, session)
    kind, shapes, kwargs = kind_args(args)
    if kind not in BILINEAR:
        raise PartyError(f"no product by a held tensor of kind {kind!r}")
    w = tensor_id_arg(args, "w")
    _, j = _holder(party, session, args)
    holder, b = _mask_of(party, session, w)
    if holder != parties[j]:
        raise PartyError(f"{w!r} is held by {holder!r}, not {parties[j]!r}")
    if tuple(b.shape) != shapes[1]:
        raise PartyError(f"{w!r} has shape {tuple(b.shape)}, not {shapes[1]}")
    parts = dealt_shapes(kind, shapes, kwargs)
    count = deal_count(args, parts)
    publics = arg_list(args, "public_keys", max_length=MAX_PARTIES)
    if len(publics) != len(parties):
        raise PartyError("one public key per party")
    first = claim_serials(party, session, count)
    label = _held_label(kind, shapes, kwargs, w)
    op = BILINEAR[kind]
    tuples: list[Value] = []
    for serial in range(first, first + count):
        seeds = {i: os.urandom(SEED_BYTES) for i in range(len(parties)) if i != j}
        a = torch.zeros(parts[0], dtype=torch.int64)
        for seed in seeds.values():
            a += expand(seed, 0, parts[0])
        c_j = op(a, b, **kwargs)
        for seed in seeds.values():
            c_j -= expand(seed, 2, parts[2])
        sealed = []
        for index, (peer, public) in enumerate(zip(parties, publics, strict=True)):
            payload = tensor_bytes(c_j) if index == j else seeds[index]
            sealed.append(
                wire_bytes(
                    seal_for(party, session, peer, public, payload, label=label, purpose=serial)
                )
            )
        tuples.append({"serial": serial, "sealed": sealed})
    return {"tuples": tuples}


def _open_held(
    party: Party, session: str, args: Mapping[str, Value], holder: bool
) -> tuple[str, list[tuple[int, ...]], dict[str, int], str, list[torch.Tensor]]:
    """This party's part of a dealt held-product tuple: (a_i, c_i), or the holder's c_j."""
    kind, shapes, kwargs = kind_args(args)
    if kind not in BILINEAR:
        raise PartyError(f"no product by a held tensor of kind {kind!r}")
    w = tensor_id_arg(args, "w")
    payload = claim_tuple(party, session, args, _held_label(kind, shapes, kwargs, w))
    parts = dealt_shapes(kind, shapes, kwargs)
    if holder:
        values = [ring_from_bytes(payload, parts[2], "the dealt correction")]
    else:
        if len(payload) != SEED_BYTES:
            raise PartyError("the dealt tuple has the wrong length")
        values = [expand(payload, 0, parts[0]), expand(payload, 2, parts[2])]
    return kind, shapes, kwargs, w, values


def _inputs(
    party: Party, session: str, args: Mapping[str, Value], shapes: list[tuple[int, ...]], w: str
) -> tuple[torch.Tensor, torch.Tensor, frozenset[str]]:
    x, x_audience = share_of(party, session, tensor_id_arg(args, "x"))
    weight, w_audience = share_of(party, session, w)
    if (tuple(x.shape), tuple(weight.shape)) != (shapes[0], shapes[1]):
        raise PartyError(f"inputs of shapes {tuple(x.shape)}, {tuple(weight.shape)} for {shapes}")
    return x, weight, x_audience & w_audience


def _finish_share(
    party: Party, session: str, args: Mapping[str, Value], z: torch.Tensor, audience: frozenset[str]
) -> None:
    parties, _, _ = group_of(party, session)
    bits = arg_int(args, "truncate", low=0, high=62)
    if bits:
        if len(parties) != 2:
            raise PartyError("local truncation needs exactly two parties")
        z = local_result("truncate", [z], {"bits": bits}, party_index(party, session))
    store_share(party, session, tensor_id_arg(args, "out"), z, audience)


def _mask_held(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """A party other than the holder: publish e_i = x_i − a_i; keep (a_i, c_i) for
    ``finish_masked``, which it runs while the holder finishes."""
    session = session_arg(args)
    _, j = _holder(party, session, args)
    if party_index(party, session) == j:
        raise PartyError("the holder finishes a held product; it does not mask")
    out = tensor_id_arg(args, "out")
    if party.has(f"{session}/pending_held/{out}") or party.has(f"{session}/v/{out}"):
        raise PartyError(f"tensor {out!r} is being made already")
    kind, shapes, kwargs, w, (a, c) = _open_held(party, session, args, holder=False)
    x, _, audience = _inputs(party, session, args, shapes, w)
    party.keep(f"{session}/pending_held/{out}", (kind, kwargs, w, a, c, audience))
    return {"masked": x - a}


def _finish_masked(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """A party other than the holder: z_i = op(a_i, f) + c_i. It depends on no
    opened value, so the coordinator asks for it alongside the holder's finish:
    the two ring operations run at once."""
    session = session_arg(args)
    kind, kwargs, w, a, c, audience = take_secret(
        party, f"{session}/pending_held/{tensor_id_arg(args, 'out')}"
    )
    f: torch.Tensor = party.secret(f"{session}/fixed/{w}/f")
    z = BILINEAR[kind](a, f, **kwargs)
    z += c
    _finish_share(party, session, args, z, audience)
    return {"shape": list(z.shape)}


def _finish_held(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """The holder: z_j = op(x_j + Σ e_i, W) + c_j."""
    session = session_arg(args)
    _, j = _holder(party, session, args)
    if party_index(party, session) != j:
        raise PartyError("only the holder finishes a held product")
    kind, shapes, kwargs, w, (c,) = _open_held(party, session, args, holder=True)
    x, weight, audience = _inputs(party, session, args, shapes, w)
    if not party.has(f"{session}/fixed/{w}/b"):
        raise PartyError(f"{w!r} was never fixed")
    e = opened_arg(args.get("opened"), shapes[0], "opened")
    z = BILINEAR[kind](x + e, weight, **kwargs)
    z += c
    _finish_share(party, session, args, z, audience)
    return {"shape": list(z.shape)}


register_party_steps(
    {
        ZEROS: _zeros,
        DEAL_FIXED: _deal_fixed,
        FIX: _fix,
        FIXED: _fixed,
        DEAL_HELD: _deal_held,
        MASK_HELD: _mask_held,
        FINISH_MASKED: _finish_masked,
        FINISH_HELD: _finish_held,
    }
)
