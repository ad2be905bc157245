"""Party steps of encrypted inference (the driver is ``coordinator``).

Three roles: the dealer (``infer.deal_*``), the data owner P0 and the model
owner P1; the protocol and its security argument are in
``mpc.protocols.encrypted_inference``, the ring math in ``mpc.inference_layers``.

Vault keys, all under ``<session>/``: ``key`` (X25519 pair, generic ``keygen``);
dealer: ``b`` (the weight masks); P1: ``weights`` (its plain model, encoded);
P0: ``f`` (the masked weights W − b), ``data`` (object ids of images and labels);
both: ``batch/<k>/...`` (one batch's dealt randomness, each item used once and
dropped as it is consumed, so a coordinator cannot make a party reuse a mask);
all three: ``last`` (the last batch index dealt or prepared: indices only grow,
so no AEAD nonce and no mask is ever used for two batches).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from mpc.inference_layers import (
    SEED_BYTES,
    activation_share,
    encode_model,
    expand,
    layer_shapes,
    ring_linear,
    truncate_share,
)
from mpc.protocols.encrypted_inference.wire import (
    SLOTS,
    batch_arg,
    claim_batch,
    encoder_arg,
    layers_arg,
    opened_from,
    purpose,
    ring_arg,
    ring_from_bytes,
    seal_to,
    take_secret,
    tensor_bytes,
)
from mpc.ring import FixedPointEncoder
from workers.codec import Value
from workers.party import (
    Party,
    PartyError,
    arg_int,
    arg_list,
    arg_str,
    register_party_steps,
    session_arg,
)

__all__ = [
    "ACTIVATE",
    "DEAL_BATCH",
    "DEAL_WEIGHTS",
    "INPUT",
    "LINEAR",
    "OUTPUT",
    "PREPARE_DATA",
    "PREPARE_MODEL",
    "SETUP_DATA",
    "SETUP_MODEL",
]

# The party steps, by the name the coordinator's driver sends.
DEAL_WEIGHTS = "infer.deal_weights"
DEAL_BATCH = "infer.deal_batch"
SETUP_MODEL = "infer.setup_model"
PREPARE_MODEL = "infer.prepare_model"
LINEAR = "infer.linear"
SETUP_DATA = "infer.setup_data"
PREPARE_DATA = "infer.prepare_data"
INPUT = "infer.input"
ACTIVATE = "infer.activate"
OUTPUT = "infer.output"

# ChaCha20 stream ids under one seed: layer i uses 4·i + kind.
_A, _C, _S, _T = range(4)
_B = 0  # weight masks: stream i of the setup seed for layer i

# ------------------------------------------------------------------ dealer


def _deal_weights(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Draw the weight masks b (one per layer, kept all session); seal their seed for P1."""
    session = session_arg(args)
    layers = layers_arg(args)
    if party.has(f"{session}/b"):
        raise PartyError(f"weight masks of session {session!r} were dealt already")
    seed = os.urandom(SEED_BYTES)
    party.keep(f"{session}/b", [expand(seed, 4 * i + _B, la.weight) for i, la in enumerate(layers)])
    return {"sealed": seal_to(party, session, args, "model_owner", seed, 0)}


def _deal_batch(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """One batch's correlated randomness: seeds for P0, a seed and corrections for P1.

    Per layer i: input mask a (P0's, from its seed) and c = op(a, b) split as
    c0 (P0's seed) + c1 (sent to P1); per activation: a square pair s = s0 + s1
    (from both seeds) and t = s² split as t0 (P0's seed) + t1 (sent to P1).
    """
    session = session_arg(args)
    layers = layers_arg(args)
    batch, count = batch_arg(args)
    masks: list[torch.Tensor] = party.secret(f"{session}/b")
    claim_batch(party, session, batch)
    seed0, seed1 = os.urandom(SEED_BYTES), os.urandom(SEED_BYTES)
    corrections: list[bytes] = []
    for i, (layer, (in_shape, out_shape)) in enumerate(
        zip(layers, layer_shapes(layers, count), strict=True)
    ):
        c = ring_linear(layer, expand(seed0, 4 * i + _A, in_shape), masks[i])
        c -= expand(seed0, 4 * i + _C, out_shape)
        corrections.append(tensor_bytes(c))
        if layer.activation:
            s = expand(seed0, 4 * i + _S, out_shape) + expand(seed1, 4 * i + _S, out_shape)
            t = s * s
            t -= expand(seed0, 4 * i + _T, out_shape)
            corrections.append(tensor_bytes(t))
    to_p1 = [seed1, *corrections]
    return {
        "to_data_owner": seal_to(party, session, args, "data_owner", seed0, purpose(batch, 0)),
        "to_model_owner": [
            seal_to(party, session, args, "model_owner", data, purpose(batch, j))
            for j, data in enumerate(to_p1)
        ],
    }


# ------------------------------------------------------------------ model owner (P1)


def _setup_model(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Encode the plain model; open the masks b; publish the masked weights f = W − b for P0."""
    session = session_arg(args)
    layers = layers_arg(args)
    encoder = encoder_arg(args)
    state = party.read_object(arg_str(args, "state_id"))
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise PartyError("state_id must name a state dict of tensors")
    weights = encode_model(state, layers, encoder)  # MPCError if it is not this architecture
    seed = opened_from(party, session, args, "dealer", args.get("sealed"), 0)
    if len(seed) != SEED_BYTES:
        raise PartyError("the dealer's mask seed has the wrong length")
    party.keep(f"{session}/weights", weights)
    party.keep(f"{session}/encoder", encoder)
    masked = [
        w - expand(seed, 4 * i + _B, la.weight)
        for i, (la, (w, _)) in enumerate(zip(layers, weights, strict=True))
    ]
    return {"masked_weights": masked}


def _prepare_model(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Open this batch's seed and corrections from the dealer; store P0's opened masks d0."""
    session = session_arg(args)
    layers = layers_arg(args)
    batch, count = batch_arg(args)
    prefix = f"{session}/batch/{batch}"
    claim_batch(party, session, batch)
    sealed = arg_list(args, "sealed", max_length=SLOTS)
    d0 = arg_list(args, "d0", max_length=len(layers))
    shapes = layer_shapes(layers, count)
    active = [i for i, la in enumerate(layers) if la.activation]
    if len(sealed) != 1 + len(layers) + len(active) or len(d0) != len(active):
        raise PartyError(f"batch {batch}: {len(sealed)} sealed items and {len(d0)} masked inputs")
    items = [
        opened_from(party, session, args, "dealer", data, purpose(batch, j))
        for j, data in enumerate(sealed)
    ]
    seed, rest = items[0], iter(items[1:])
    if len(seed) != SEED_BYTES:
        raise PartyError("the dealer's batch seed has the wrong length")
    opened = iter(d0)
    for i, (layer, (_, out_shape)) in enumerate(zip(layers, shapes, strict=True)):
        party.keep(f"{prefix}/c/{i}", ring_from_bytes(next(rest), out_shape, f"c1[{i}]"))
        if layer.activation:
            party.keep(f"{prefix}/t/{i}", ring_from_bytes(next(rest), out_shape, f"t1[{i}]"))
            party.keep(f"{prefix}/s/{i}", expand(seed, 4 * i + _S, out_shape))
            party.keep(f"{prefix}/d0/{i}", ring_arg(next(opened), f"d0[{i}]", out_shape))
    party.keep(f"{prefix}/count", count)
    party.keep(f"{prefix}/next", 0)
    return {"prepared": batch}


def _linear(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Layer ``layer`` on P1: z1 = op(x1 + e, W) + c1 + bias, truncated; then its activation.

    Returns P1's masked activation input d1 = y1 − s1 (for P0), or, for the last
    layer, P1's share of the logits sealed for P0.
    """
    session = session_arg(args)
    layers = layers_arg(args)
    batch = arg_int(args, "batch", low=0, high=2**24)
    prefix = f"{session}/batch/{batch}"
    index = arg_int(args, "layer", low=0, high=len(layers) - 1)
    if party.secret(f"{prefix}/next") != index:
        raise PartyError(f"batch {batch}: layer {index} is not the next one")
    count = party.secret(f"{prefix}/count")
    layer = layers[index]
    in_shape, _ = layer_shapes(layers, count)[index]
    e = ring_arg(args.get("e"), "e", in_shape)
    weight, bias = party.secret(f"{session}/weights")[index]
    encoder: FixedPointEncoder = party.secret(f"{session}/encoder")
    x = e if index == 0 else take_secret(party, f"{prefix}/x") + e
    z = ring_linear(layer, x, weight)
    z += take_secret(party, f"{prefix}/c/{index}")
    z += bias
    y = truncate_share(z, encoder.fractional_bits, 1, inplace=True)
    if index == len(layers) - 1:
        party.forget(prefix + "/")
        data = tensor_bytes(y)
        return {"sealed": seal_to(party, session, args, "data_owner", data, purpose(batch, 0))}
    if not layer.activation:
        raise PartyError(f"layer {layer.name} without activation is only supported last")
    s = take_secret(party, f"{prefix}/s/{index}")
    d1 = y - s
    d = d1 + take_secret(party, f"{prefix}/d0/{index}")
    t = take_secret(party, f"{prefix}/t/{index}")
    party.keep(
        f"{prefix}/x",
        activation_share(y, d, s, t, party=1, pool=layer.pool, encoder=encoder),
    )
    party.keep(f"{prefix}/next", index + 1)
    return {"d": d1}


# ------------------------------------------------------------------ data owner (P0)


def _setup_data(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Keep the masked weights f = W − b and the ids of this worker's test images and labels."""
    session = session_arg(args)
    layers = layers_arg(args)
    masked = arg_list(args, "masked_weights", max_length=len(layers))
    if len(masked) != len(layers):
        raise PartyError(f"{len(masked)} masked weights for {len(layers)} layers")
    f = [
        ring_arg(m, f"masked_weights[{i}]", la.weight)
        for i, (m, la) in enumerate(zip(masked, layers, strict=True))
    ]
    images, _ = _data(party, arg_str(args, "images_id"), arg_str(args, "labels_id"))
    party.keep(f"{session}/f", f)
    party.keep(f"{session}/encoder", encoder_arg(args))
    party.keep(f"{session}/data", (arg_str(args, "images_id"), arg_str(args, "labels_id")))
    return {"num_images": int(images.shape[0])}


def _data(party: Party, images_id: str, labels_id: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = party.read_object(images_id)
    labels = party.read_object(labels_id)
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4:
        raise PartyError(f"{images_id!r} is not a float (N, C, H, W) image tensor")
    if not isinstance(labels, torch.Tensor) or labels.shape != images.shape[:1]:
        raise PartyError(f"{labels_id!r} is not one label per image")
    return images, labels


def _prepare_data(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Expand this batch's seed; compute P0's (data-independent) linear shares and masked
    activation inputs d0 = y0 − s0 ahead of time, and publish d0 for P1."""
    session = session_arg(args)
    layers = layers_arg(args)
    batch, count = batch_arg(args)
    start = arg_int(args, "start", low=0, high=2**40)
    prefix = f"{session}/batch/{batch}"
    claim_batch(party, session, batch)
    images, _ = _data(party, *party.secret(f"{session}/data"))
    if start + count > images.shape[0]:
        raise PartyError(f"images {start}..{start + count} exceed the {images.shape[0]} held")
    seed = opened_from(party, session, args, "dealer", args.get("sealed"), purpose(batch, 0))
    if len(seed) != SEED_BYTES:
        raise PartyError("the dealer's batch seed has the wrong length")
    f: list[torch.Tensor] = party.secret(f"{session}/f")
    bits = party.secret(f"{session}/encoder").fractional_bits
    d0 = []
    for i, (layer, (in_shape, out_shape)) in enumerate(
        zip(layers, layer_shapes(layers, count), strict=True)
    ):
        a = expand(seed, 4 * i + _A, in_shape)
        z = ring_linear(layer, a, f[i])
        z += expand(seed, 4 * i + _C, out_shape)
        y = truncate_share(z, bits, 0, inplace=True)
        party.keep(f"{prefix}/a/{i}", a)
        party.keep(f"{prefix}/y/{i}", y)
        if layer.activation:
            s = expand(seed, 4 * i + _S, out_shape)
            party.keep(f"{prefix}/s/{i}", s)
            party.keep(f"{prefix}/t/{i}", expand(seed, 4 * i + _T, out_shape))
            d0.append(y - s)
            party.keep(f"{prefix}/d0/{i}", d0[-1])
    party.keep(f"{prefix}/range", (start, count))
    party.keep(f"{prefix}/next", 0)
    return {"d0": d0}


def _input(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Encode this batch's images and publish them masked: e = x − a (for P1)."""
    session = session_arg(args)
    batch = arg_int(args, "batch", low=0, high=2**24)
    prefix = f"{session}/batch/{batch}"
    if party.secret(f"{prefix}/next") != 0:
        raise PartyError(f"batch {batch}: the input was shared already")
    start, count = party.secret(f"{prefix}/range")
    images, _ = _data(party, *party.secret(f"{session}/data"))
    x = party.secret(f"{session}/encoder").encode(images[start : start + count])
    party.keep(f"{prefix}/next", 1)
    return {"e": x - take_secret(party, f"{prefix}/a/0")}


def _activate(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Activation of layer ``layer`` on P0 given P1's d1; publish the next masked input e."""
    session = session_arg(args)
    layers = layers_arg(args)
    batch = arg_int(args, "batch", low=0, high=2**24)
    prefix = f"{session}/batch/{batch}"
    index = arg_int(args, "layer", low=0, high=len(layers) - 2)
    if party.secret(f"{prefix}/next") != index + 1 or not layers[index].activation:
        raise PartyError(f"batch {batch}: activation {index} is not the next step")
    _, count = party.secret(f"{prefix}/range")
    d1 = ring_arg(args.get("d"), "d", layer_shapes(layers, count)[index][1])
    encoder: FixedPointEncoder = party.secret(f"{session}/encoder")
    x = activation_share(
        take_secret(party, f"{prefix}/y/{index}"),
        take_secret(party, f"{prefix}/d0/{index}") + d1,
        take_secret(party, f"{prefix}/s/{index}"),
        take_secret(party, f"{prefix}/t/{index}"),
        party=0,
        pool=layers[index].pool,
        encoder=encoder,
    )
    party.keep(f"{prefix}/next", index + 2)
    return {"e": x - take_secret(party, f"{prefix}/a/{index + 1}")}


def _output(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    """Open the logits (P0's share + P1's sealed share); report predictions and the hit count."""
    session = session_arg(args)
    layers = layers_arg(args)
    batch = arg_int(args, "batch", low=0, high=2**24)
    prefix = f"{session}/batch/{batch}"
    last = len(layers) - 1
    if party.secret(f"{prefix}/next") != last + 1:
        raise PartyError(f"batch {batch}: the logits are not due yet")
    start, count = party.secret(f"{prefix}/range")
    y0: torch.Tensor = party.secret(f"{prefix}/y/{last}")
    data = opened_from(party, session, args, "model_owner", args.get("sealed"), purpose(batch, 0))
    y1 = ring_from_bytes(data, y0.shape, "the model owner's logits share")
    party.forget(prefix + "/")
    logits = party.secret(f"{session}/encoder").decode(y0 + y1)
    _, labels = _data(party, *party.secret(f"{session}/data"))
    predictions = logits.argmax(dim=1)
    correct = int((predictions == labels[start : start + count]).sum())
    reply: dict[str, Value] = {"predictions": predictions, "correct": correct}
    if args.get("report_logits") is True:
        reply["logits"] = logits
    return reply


register_party_steps(
    {
        DEAL_WEIGHTS: _deal_weights,
        DEAL_BATCH: _deal_batch,
        SETUP_MODEL: _setup_model,
        PREPARE_MODEL: _prepare_model,
        LINEAR: _linear,
        SETUP_DATA: _setup_data,
        PREPARE_DATA: _prepare_data,
        INPUT: _input,
        ACTIVATE: _activate,
        OUTPUT: _output,
    }
)
