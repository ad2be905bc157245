"""Encrypted evaluation of mpc-cnn: PyTorch's predictions, nothing in clear at the coordinator."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch

from fl.data import Split, load_split
from fl.models import build_model, get_state
from fl.training import TrainConfig, train_local
from mpc.errors import MPCError
from mpc.protocols.encrypted_inference.coordinator import EncryptedEvalResult, encrypted_evaluate
from mpc.ring import FixedPointEncoder
from tests.worker_processes import worker_processes
from workers.base import Worker
from workers.codec import Value
from workers.errors import RemoteError
from workers.virtual import VirtualWorker

LOGIT_TOLERANCE = 2e-3  # fixed point f = 16 through 4 layers: measured ≈ 1e-4


@pytest.fixture(scope="module")
def trained() -> dict[str, torch.Tensor]:
    """An mpc-cnn trained briefly (2,000 images, one epoch), so accuracy means something."""
    model = build_model("mpc-cnn", seed=0)
    data = load_split("fashion-mnist", train=True, limit=2000)
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    train_local(model, data, config, torch.Generator().manual_seed(0))
    return get_state(model)


@pytest.fixture(scope="module")
def test_split() -> Split:
    return load_split("fashion-mnist", train=False, limit=300)


def _plain_logits(state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    model = build_model("mpc-cnn")
    model.load_state_dict(state)
    model.eval()
    with torch.inference_mode():
        logits: torch.Tensor = model(images)
    return logits.double()


def _parties(prefix: str = "") -> dict[str, Worker]:
    return {
        "data_owner": VirtualWorker(f"{prefix}data-owner"),
        "model_owner": VirtualWorker(f"{prefix}model-owner"),
        "dealer": VirtualWorker(f"{prefix}dealer"),
    }


def _run(
    parties: Mapping[str, Worker],
    state: dict[str, torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    **options: Any,
) -> EncryptedEvalResult:
    return encrypted_evaluate(
        state,
        images,
        labels,
        data_owner=parties["data_owner"],
        model_owner=parties["model_owner"],
        dealer=parties["dealer"],
        **options,
    )


def _assert_matches_plain(result: EncryptedEvalResult, plain: torch.Tensor) -> None:
    assert result.logits is not None
    assert float((result.logits - plain).abs().max()) < LOGIT_TOLERANCE
    top2 = plain.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * LOGIT_TOLERANCE  # no near-tie to flip
    assert torch.equal(result.predictions[clear], plain.argmax(dim=1)[clear])


def test_predictions_equal_plaintext_on_virtual_workers(
    trained: dict[str, torch.Tensor], test_split: Split
) -> None:
    # Prepare
    images, labels = test_split.x[:64], test_split.y[:64]
    plain = _plain_logits(trained, images)

    # Execute
    result = _run(_parties(), trained, images, labels, batch_size=24, report_logits=True)

    # Assert
    _assert_matches_plain(result, plain)
    assert result.num_images == 64
    assert result.correct == int((result.predictions == labels).sum())
    assert result.offline_seconds > 0 and result.online_seconds > 0 and result.bytes_moved > 0


def test_accuracy_within_half_a_point_of_plaintext(
    trained: dict[str, torch.Tensor], test_split: Split
) -> None:
    # Prepare
    plain = _plain_logits(trained, test_split.x)
    plain_accuracy = float((plain.argmax(dim=1) == test_split.y).double().mean())

    # Execute
    result = _run(_parties(), trained, test_split.x, test_split.y, batch_size=150, parallel=True)

    # Assert
    assert result.num_images == 300
    assert abs(result.accuracy - plain_accuracy) <= 0.005
    assert plain_accuracy > 0.5  # the model learned something, so the comparison means something


class RecordingWorker(VirtualWorker):
    """A virtual worker that records every tensor the coordinator passes it or gets back."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(worker_id)
        self.seen: list[torch.Tensor] = []

    def _collect(self, value: Value) -> None:
        if isinstance(value, torch.Tensor):
            self.seen.append(value)
        elif isinstance(value, list | tuple):
            for item in value:
                self._collect(item)
        elif isinstance(value, dict):
            for item in value.values():
                self._collect(item)

    def party_op(self, op: str, **args: Value) -> dict[str, Value]:
        self._collect(args)
        reply = super().party_op(op, **args)
        self._collect(reply)
        return reply


def _overlap(seen: torch.Tensor, secret: torch.Tensor) -> float:
    """Fraction of ``secret``'s ring elements found at the same positions of ``seen``."""
    if seen.dtype != torch.int64 or seen.numel() != secret.numel():
        return 0.0
    return float((seen.reshape(-1) == secret.reshape(-1)).double().mean())


def test_coordinator_relays_no_plaintext_images_or_weights(
    trained: dict[str, torch.Tensor], test_split: Split
) -> None:
    # Prepare
    images, labels = test_split.x[:8], test_split.y[:8]
    workers = {role: RecordingWorker(role) for role in ("data_owner", "model_owner", "dealer")}
    encoder = FixedPointEncoder()
    secrets = [encoder.encode(images[:4]), encoder.encode(images[4:])]
    secrets += [encoder.encode(v) for k, v in trained.items() if k.endswith("weight")]

    # Execute
    _run(workers, trained, images, labels, batch_size=4)

    # Assert: every int64 tensor relayed is unrelated to the encoded images and weights.
    relayed = [t for w in workers.values() for t in w.seen]
    assert relayed
    worst = max(_overlap(t, s) for t in relayed for s in secrets)
    assert worst < 0.01
    masked = workers["model_owner"].seen  # includes the masked weights f = W − b it published
    assert any(t.shape == trained["conv1.weight"].shape for t in masked)
    floats = [t for t in relayed if t.is_floating_point()]
    assert not any(t.numel() == images.numel() for t in floats)  # images never leave in clear


def test_bad_input_gets_an_error_reply_and_the_worker_keeps_working(
    trained: dict[str, torch.Tensor], test_split: Split
) -> None:
    # Prepare
    parties = _parties("bad-")
    p0, p1 = parties["data_owner"], parties["model_owner"]
    p1.party_op("keygen", session="s")
    bad_calls: list[tuple[Worker, str, dict[str, Any]]] = [
        (p1, "infer.linear", {"session": "s", "model": "mpc-cnn", "batch": 0, "layer": 0}),
        (p1, "infer.linear", {"session": "s", "model": "resnet", "batch": 0, "layer": 0}),
        (p0, "infer.setup_data", {"session": "s", "model": "mpc-cnn", "masked_weights": "x"}),
        (p0, "infer.input", {"session": "s/../t", "batch": 0}),
        (
            p1,
            "infer.setup_model",
            {
                "session": "s",
                "model": "mpc-cnn",
                "fractional_bits": 16,
                "state_id": p1.send({"w": torch.zeros(2)}).id,
            },
        ),
    ]

    # Execute
    errors = []
    for worker, op, args in bad_calls:
        with pytest.raises(RemoteError) as caught:
            worker.party_op(op, **args)
        errors.append(caught.value.code)
    result = _run(parties, trained, test_split.x[:8], test_split.y[:8], batch_size=8)

    # Assert
    assert errors == ["bad_request"] * len(bad_calls)
    assert result.num_images == 8
    with pytest.raises(MPCError, match="three distinct"):
        _run({**parties, "dealer": p0}, trained, test_split.x[:8], test_split.y[:8])


ONE_TIME_STEPS = {
    "infer.deal_weights",
    "infer.deal_batch",
    "infer.prepare_data",
    "infer.prepare_model",
    "infer.input",
    "infer.linear",
    "infer.activate",
    "infer.output",
}


class ReplayingWorker(VirtualWorker):
    """A coordinator that replays every one-time step right after it succeeded."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(worker_id)
        self.refusals: list[str] = []

    def party_op(self, op: str, **args: Value) -> dict[str, Value]:
        reply = super().party_op(op, **args)
        if op in ONE_TIME_STEPS:
            with pytest.raises(RemoteError) as caught:
                super().party_op(op, **args)
            self.refusals.append(caught.value.code)
        return reply


def test_a_replayed_step_is_refused_so_no_mask_is_used_twice(
    trained: dict[str, torch.Tensor], test_split: Split
) -> None:
    # Prepare
    images, labels = test_split.x[:6], test_split.y[:6]
    workers = {role: ReplayingWorker(role) for role in ("data_owner", "model_owner", "dealer")}
    plain = _plain_logits(trained, images)

    # Execute
    result = _run(workers, trained, images, labels, batch_size=3, report_logits=True)

    # Assert: every replay refused, and the refusals did not disturb the run.
    refusals = [code for w in workers.values() for code in w.refusals]
    # per batch: deal, prepare ×2, input, 4 linear, 3 activate, output; deal_weights once
    assert refusals == ["bad_request"] * (2 * 12 + 1)
    _assert_matches_plain(result, plain)


# ------------------------------------------------------------------ websocket


@pytest.fixture(scope="module")
def ws_parties() -> Iterator[dict[str, Worker]]:
    roles = ("data_owner", "model_owner", "dealer")
    with worker_processes(len(roles)) as workers:
        yield dict(zip(roles, workers, strict=True))


@pytest.mark.e2e
def test_predictions_equal_plaintext_over_websocket_workers(
    trained: dict[str, torch.Tensor], test_split: Split, ws_parties: dict[str, Worker]
) -> None:
    # Prepare
    images, labels = test_split.x[:6], test_split.y[:6]
    plain = _plain_logits(trained, images)

    # Execute
    result = _run(ws_parties, trained, images, labels, batch_size=4, report_logits=True)

    # Assert
    _assert_matches_plain(result, plain)
    assert result.num_images == 6
