"""The data owner's step of encrypted evaluation: score predictions it alone holds.

The logits of each batch are revealed to the data owner only
(``RemoteShared.reveal_to``); it compares their argmax with its own labels and
answers with one count, which is all the coordinator learns of that batch.
Each batch of a session is scored once, so a coordinator cannot ask again
about the same images with other logits.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from workers.codec import Value
from workers.party import Party, PartyError, arg_int, arg_str, register_party_steps, session_arg

__all__ = ["SCORE"]

SCORE = "infer.score"


def _score(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    session = session_arg(args)
    start = arg_int(args, "start", low=0, high=2**40)
    key = f"{session}/scored/{start}"
    if party.has(key):
        raise PartyError(f"images from {start} were scored already in session {session!r}")
    logits_id, labels_id = arg_str(args, "logits_id"), arg_str(args, "labels_id")
    if not party.was_revealed(logits_id):
        raise PartyError(f"{logits_id!r} was not revealed to this worker: nothing to score")
    logits, labels = party.read_object(logits_id), party.read_object(labels_id)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise PartyError(f"{logits_id!r} is not a (batch, classes) tensor")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        raise PartyError(f"{labels_id!r} is not a label vector")
    if start + logits.shape[0] > labels.shape[0]:
        raise PartyError(f"images {start}..{start + logits.shape[0]} exceed the labels held")
    party.keep(key, True)
    predictions = logits.argmax(dim=1)
    correct = int((predictions == labels[start : start + logits.shape[0]]).sum())
    return {"correct": correct, "count": int(logits.shape[0])}


register_party_steps({SCORE: _score})
