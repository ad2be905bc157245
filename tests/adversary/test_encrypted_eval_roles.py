"""A cheating coordinator against encrypted evaluation (``mpc.protocols.encrypted_inference``).

It drives the whole evaluation and keeps every frame: the data owner's images,
the model owner's weights and the logits must be nowhere in them — searched
for as the coordinator could (``tests.adversary.transcripts``), and found by
the same search once the relay is not encrypted.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from fl.models import build_model, get_state
from mpc.protocols.encrypted_inference.coordinator import encrypted_evaluate
from mpc.ring import FixedPointEncoder
from tests.adversary.transcripts import TappedWorker, recover, ring_candidates
from workers.core import WorkerCore

IMAGES = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(5))
LABELS = torch.tensor([0, 1, 2, 3])
STATE = get_state(build_model("mpc-cnn", seed=0))


def _plain_logits() -> torch.Tensor:
    model = build_model("mpc-cnn")
    model.load_state_dict(STATE)
    with torch.inference_mode():
        return model(IMAGES).double()  # type: ignore[no-any-return]


def _evaluate(transcript: list[bytes]) -> int:
    data_owner = TappedWorker("data-owner", transcript)
    own = {"x": IMAGES, "y": LABELS}
    data_owner.core = WorkerCore("data-owner", objects=own, private=frozenset(own))
    model_owner = TappedWorker("model-owner", transcript)
    dealer = TappedWorker("dealer", transcript)
    weights = {key: model_owner.send(value) for key, value in STATE.items()}
    result = encrypted_evaluate(
        data_owner=data_owner, model_owner=model_owner, dealer=dealer, images_id="x",
        labels_id="y", weight_ids={k: p.id for k, p in weights.items()}, batch_size=4,
    )  # fmt: skip
    return result.correct


def _logits_near(transcript: list[bytes], plain: torch.Tensor) -> bool:
    """Any one or two ring tensors of the logits' shape, seen or read from bytes,
    whose sum decodes to within 0.01 of the plaintext logits."""
    encoder, shape = FixedPointEncoder(), tuple(plain.shape)
    candidates = ring_candidates(transcript, shape, seeds=False)
    for size in (1, 2):
        for combo in itertools.combinations(candidates, size):
            total = sum(combo, torch.zeros(shape, dtype=torch.int64))
            if float((encoder.decode(total) - plain).abs().max()) < 0.01:
                return True
    return False


def test_the_coordinator_finds_no_image_weight_or_logit_in_what_it_relayed() -> None:
    transcript: list[bytes] = []
    _evaluate(transcript)
    encoder = FixedPointEncoder()
    assert recover(transcript, tuple(IMAGES.shape), encoder.encode(IMAGES)) is None
    conv1 = STATE["conv1.weight"]
    assert recover(transcript, tuple(conv1.shape), encoder.encode(conv1)) is None
    assert not _logits_near(transcript, _plain_logits())


def test_the_search_finds_all_three_over_an_unencrypted_relay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("mpc.protocols.sessions.seal", lambda _key, _public, payload, **_: payload)
    monkeypatch.setattr("mpc.protocols.sessions.open_sealed", lambda _key, _public, data, **_: data)
    transcript: list[bytes] = []
    _evaluate(transcript)
    encoder = FixedPointEncoder()
    assert recover(transcript, tuple(IMAGES.shape), encoder.encode(IMAGES)) is not None
    conv1 = STATE["conv1.weight"]
    assert recover(transcript, tuple(conv1.shape), encoder.encode(conv1)) is not None
    assert _logits_near(transcript, _plain_logits())
