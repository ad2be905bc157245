"""Argument checks and wire helpers shared by the encrypted-inference party steps.

Kept apart from the steps (``mpc.protocols.encrypted_inference.steps``) so that module holds
only what each role does; everything here is about validating what arrives
and moving ring tensors and sealed bytes without extra copies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mpc.inference_layers import MPC_CNN, Layer
from mpc.protocols.payloads import ring_from_bytes, take_secret, tensor_bytes, wire_bytes
from mpc.protocols.sessions import open_from, seal_for
from mpc.ring import FixedPointEncoder
from workers.codec import Value
from workers.party import (
    Party,
    PartyError,
    arg_int,
    arg_str,
    check_tensor,
)

__all__ = [
    "MAX_BATCH",
    "MODELS",
    "SLOTS",
    "batch_arg",
    "claim_batch",
    "encoder_arg",
    "layers_arg",
    "opened_from",
    "purpose",
    "ring_arg",
    "ring_from_bytes",
    "seal_to",
    "take_secret",
    "tensor_bytes",
    "wire_bytes",
]

MAX_BATCH = 4096  # images per batch: bounds what one request can make a party allocate
MODELS: Mapping[str, tuple[Layer, ...]] = {"mpc-cnn": MPC_CNN}
SLOTS = 16  # sealed messages per batch and direction (≤ 1 + layers + activations)


def purpose(batch: int, slot: int) -> int:
    """The AEAD nonce of message ``slot`` of batch ``batch`` (0 is the setup message)."""
    return 1 + batch * SLOTS + slot


def layers_arg(args: Mapping[str, Value]) -> tuple[Layer, ...]:
    name = arg_str(args, "model")
    if name not in MODELS:
        raise PartyError(f"no encrypted inference for model {name!r}")
    return MODELS[name]


def encoder_arg(args: Mapping[str, Value]) -> FixedPointEncoder:
    return FixedPointEncoder(arg_int(args, "fractional_bits", low=8, high=24))


def batch_arg(args: Mapping[str, Value]) -> tuple[int, int]:
    return arg_int(args, "batch", low=0, high=2**24), arg_int(args, "count", low=1, high=MAX_BATCH)


def claim_batch(party: Party, session: str, batch: int) -> None:
    """Batch indices only grow: a batch's nonces and masks can never be dealt or used twice."""
    last = party.secret(f"{session}/last") if party.has(f"{session}/last") else -1
    if batch <= last:
        raise PartyError(f"batch {batch} is not after batch {last} of session {session!r}")
    party.keep(f"{session}/last", batch)


def seal_to(
    party: Party, session: str, args: Mapping[str, Value], peer: str, data: bytes, nonce: int
) -> torch.Tensor:
    recipient, public = arg_str(args, peer), args.get(f"{peer}_key")
    return wire_bytes(
        seal_for(party, session, recipient, public, data, label="infer", purpose=nonce)
    )


def opened_from(
    party: Party, session: str, args: Mapping[str, Value], peer: str, data: Value, nonce: int
) -> bytes:
    ciphertext = tensor_bytes(check_tensor(data, "sealed", dtype=torch.uint8, ndim=1))
    sender, public = arg_str(args, peer), args.get(f"{peer}_key")
    return open_from(party, session, sender, public, ciphertext, label="infer", purpose=nonce)


def ring_arg(value: Value, name: str, shape: Sequence[int]) -> torch.Tensor:
    tensor = check_tensor(value, name, dtype=torch.int64)
    if tuple(tensor.shape) != tuple(shape):
        raise PartyError(f"{name!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    return tensor
