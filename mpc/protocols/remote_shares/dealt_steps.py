"""Party steps of products with dealt tuples: Beaver products, squares, truncation pairs.

The provider deals each tuple sealed for every party (``deal``); each party
opens its part, publishes its masked inputs (``mask``), and finishes its share
of the result from the openings the coordinator sums (``finish``). The ring
math is ``mpc.beaver``'s, one party at a time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from mpc.protocols.payloads import ring_from_bytes, take_secret, tensor_bytes, wire_bytes
from mpc.protocols.remote_shares.steps import local_result
from mpc.protocols.remote_shares.vault import (
    BILINEAR,
    MAX_PARTIES,
    MAX_SERIAL,
    UsedSerials,
    deal_count,
    dealt_shapes,
    group_of,
    kind_args,
    opened_arg,
    party_index,
    share_of,
    store_share,
    tensor_id_arg,
    tuple_label,
)
from mpc.protocols.sessions import open_from, seal_for
from mpc.random import SEED_BYTES, expand
from workers.codec import Value
from workers.party import (
    Party,
    PartyError,
    arg_int,
    arg_list,
    check_tensor,
    register_party_steps,
    session_arg,
)

__all__ = [
    "DEAL",
    "FINISH",
    "MASK",
    "claim_serials",
    "claim_tuple",
    "require_provider",
]

DEAL = "shares.deal"
MASK = "shares.mask"
FINISH = "shares.finish"


def _deal(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """``count`` fresh tuples of one kind, each sealed for every party.

    Party i ≥ 1 gets a seed that expands to its shares of every part; party 0
    gets a seed for its shares of the random parts and, explicitly, its share
    of the correlated one (c = op(a, b), a², or r >> bits), which makes the
    parts sum to a valid tuple.
    """
    session = session_arg(args)
    parties = require_provider(party, session)
    kind, shapes, kwargs = kind_args(args)
    parts = dealt_shapes(kind, shapes, kwargs)
    count = deal_count(args, parts)
    publics = arg_list(args, "public_keys", max_length=MAX_PARTIES)
    if len(publics) != len(parties):
        raise PartyError("one public key per party")
    first = claim_serials(party, session, count)
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


def require_provider(party: Party, session: str) -> list[str]:
    """The session's parties, if this worker is its provider (else a refusal)."""
    parties, provider, _ = group_of(party, session)
    if party.worker_id != provider:
        raise PartyError(f"{party.worker_id!r} is not the provider of session {session!r}")
    return parties


def claim_serials(party: Party, session: str, count: int) -> int:
    """The provider's next ``count`` serials (the first): serials only grow, so no
    two tuples share one, and each is the AEAD purpose of its sealing."""
    first: int = party.secret(f"{session}/serial") if party.has(f"{session}/serial") else 0
    if first + count > MAX_SERIAL:
        raise PartyError(f"session {session!r} has dealt {first} tuples: start a new group")
    party.keep(f"{session}/serial", first + count)
    return first


def claim_tuple(
    party: Party,
    session: str,
    args: Mapping[str, Value],
    label: str,
    *,
    sealed: str = "sealed",
    record: str = "used",
) -> bytes:
    """A dealt tuple's payload for this party: sealed by the provider under ``label``
    (its kind and shapes) in argument ``sealed``, never used before by this party —
    and now used (its serial kept in the vault's ``record``)."""
    _, provider, _ = group_of(party, session)
    serial = arg_int(args, "serial", low=0, high=MAX_SERIAL - 1)
    used: UsedSerials = party.secret(f"{session}/{record}")
    if serial in used:
        raise PartyError(f"dealt tuple {serial} was used already: refused")
    data = check_tensor(args.get(sealed), sealed, dtype=torch.uint8, ndim=1)
    payload = open_from(
        party, session, provider, args.get("provider_key"), tensor_bytes(data),
        label=label, purpose=serial,
    )  # fmt: skip
    used.add(serial)
    return payload


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
    index = party_index(party, session)
    payload = claim_tuple(party, session, args, tuple_label(kind, shapes, kwargs))
    parts = dealt_shapes(kind, shapes, kwargs)
    seed, rest = payload[:SEED_BYTES], payload[SEED_BYTES:]
    if len(seed) != SEED_BYTES or (index == 0) != bool(rest):
        raise PartyError("the dealt tuple has the wrong length")
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
        z = op(e, b, **kwargs)  # summed in place: one allocation for the result
        z += op(a, f, **kwargs)
        z += c
        if index == 0:
            z += op(e, f, **kwargs)
    elif kind == "square":
        a, a2 = parts
        z = torch.mul(e, a)
        z *= 2
        z += a2
        if index == 0:
            z.addcmul_(e, e)
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


register_party_steps({DEAL: _deal, MASK: _mask, FINISH: _finish})
