"""The data owner's step of encrypted evaluation: score predictions it alone holds.

The logits of each batch are revealed to the data owner only
(``RemoteShared.reveal_to``); it compares their argmax with its own labels and
answers with one count, which is all the coordinator learns of that batch.
A coordinator can compute logits of its own choosing on the data owner's
images and have them scored, so the data owner bounds what a count can tell:
each of its images is scored once, whatever the session, and a count covers
at least :data:`MIN_SCORED` images (fewer only for the last images it holds).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from workers.codec import Value
from workers.party import Party, PartyError, arg_int, arg_str, register_party_steps, session_arg

__all__ = ["MIN_SCORED", "SCORE"]

SCORE = "infer.score"


MIN_SCORED = 16  # images per published count (but the last few the labels hold)


class _Scored:
    """Which of one label set's images were scored (kept for the worker's lifetime)."""

    def __init__(self) -> None:
        self.images: set[int] = set()


def _score(party: Party, args: Mapping[str, Value]) -> dict[str, Value]:
    session_arg(args)
    start = arg_int(args, "start", low=0, high=2**40)
    logits_id, labels_id = arg_str(args, "logits_id"), arg_str(args, "labels_id")
    if not party.was_revealed(logits_id):
        raise PartyError(f"{logits_id!r} was not revealed to this worker: nothing to score")
    logits, labels = party.read_object(logits_id), party.read_object(labels_id)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise PartyError(f"{logits_id!r} is not a (batch, classes) tensor")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        raise PartyError(f"{labels_id!r} is not a label vector")
    count = int(logits.shape[0])
    if start + count > labels.shape[0]:
        raise PartyError(f"images {start}..{start + count} exceed the labels held")
    if count < min(MIN_SCORED, labels.shape[0] - start):
        raise PartyError(f"a count covers at least {MIN_SCORED} images, not {count}")
    scored = party.lasting(f"infer.scored/{labels_id}", _Scored)
    images = range(start, start + count)
    if any(i in scored.images for i in images):
        raise PartyError(f"images {start}..{start + count} include some scored already")
    scored.images.update(images)
    predictions = logits.argmax(dim=1)
    correct = int((predictions == labels[start : start + count]).sum())
    return {"correct": correct, "count": count}


register_party_steps({SCORE: _score})
