"""HE aggregation's first steps run by hand, as a coordinator would, for tests that
then play the coordinator's part themselves (decryption requests, attacks)."""

from __future__ import annotations

from typing import Any

import torch

from mpc.flatten import float_keys
from mpc.he import load_context
from tests.mpc.secure_inputs import sealed_input
from workers.virtual import VirtualWorker


def he_session(
    workers: list[VirtualWorker], states: list[dict[str, torch.Tensor]], session: str = "s1"
) -> dict[str, Any]:
    """Keys, context and encryption with ``workers[0]`` as key holder, each worker
    encrypting its state (weight 5); returns what the coordinator holds: session,
    key_id, public context, the encrypt replies and their ciphertext bytes."""
    publics = [w.party_op("keygen", session=session)["public_key"] for w in workers]
    state_ids = [sealed_input(w, s, 5).state_id for w, s in zip(workers, states, strict=True)]
    holder, others = workers[0], workers[1:]
    reply = holder.party_op(
        "he.keygen",
        session=session,
        clients=[w.id for w in others],
        public_keys=publics[1:],
        weighting="samples",
        state_id=state_ids[0],
    )
    for w, sealed in zip(others, reply["sealed"], strict=True):  # type: ignore[arg-type]
        w.party_op(
            "he.accept_key",
            session=session,
            sender=holder.id,
            sender_public_key=publics[0],
            sealed=sealed,
            public_context=reply["public_context"],
            key_id=reply["key_id"],
        )
    encrypted = [
        w.party_op(
            "he.encrypt",
            session=session,
            state_id=state_id,
            weighting="samples",
            keys=float_keys(state),
            clients=len(workers),
            key_id=reply["key_id"],
        )
        for w, state, state_id in zip(workers, states, state_ids, strict=True)
    ]
    public = load_context(reply["public_context"].numpy().tobytes(), secret=False)  # type: ignore[union-attr]
    chunks = [[c.numpy().tobytes() for c in r["ciphertexts"]] for r in encrypted]  # type: ignore[union-attr]
    return {
        "session": session,
        "key_id": reply["key_id"],
        "public": public,
        "encrypted": encrypted,
        "chunks": chunks,
    }
