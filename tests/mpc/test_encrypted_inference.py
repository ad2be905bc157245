"""Encrypted evaluation of mpc-cnn on remote shares: PyTorch's accuracy, real owners."""

from __future__ import annotations

import pytest
import torch

from fl.data import Split, load_split
from fl.models import PolyActivation, build_model, get_state
from fl.partition import Partitioning
from fl.task_data import load_partition
from fl.training import TrainConfig, train_local
from mpc.errors import MPCError
from mpc.protocols.encrypted_inference.coordinator import (
    POLY,
    EncryptedEvalResult,
    encrypted_evaluate,
)
from tests.worker_processes import worker_processes
from workers.base import Worker
from workers.core import TRAIN_X_ID, TRAIN_Y_ID, WorkerCore
from workers.virtual import VirtualWorker

X, Y = "data/test/x", "data/test/y"


@pytest.fixture(scope="module")
def trained() -> dict[str, torch.Tensor]:
    """An mpc-cnn trained briefly (2,000 images, one epoch), so accuracy means something."""
    model = build_model("mpc-cnn", seed=0)
    data = load_split("fashion-mnist", train=True, limit=2000)
    train_local(
        model, data, TrainConfig(epochs=1, batch_size=32, lr=0.05), torch.Generator().manual_seed(0)
    )
    return get_state(model)


@pytest.fixture(scope="module")
def test_split() -> Split:
    return load_split("fashion-mnist", train=False, limit=300)


def _plain_correct(
    state: dict[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor
) -> tuple[int, torch.Tensor]:
    model = build_model("mpc-cnn")
    model.load_state_dict(state)
    model.eval()
    with torch.inference_mode():
        logits: torch.Tensor = model(images)
    return int((logits.argmax(dim=1) == labels).sum()), logits


def _data_owner(images: torch.Tensor, labels: torch.Tensor) -> VirtualWorker:
    own = {X: images, Y: labels}
    return VirtualWorker(
        "data-owner", core=WorkerCore("data-owner", objects=own, private=frozenset(own))
    )


def _evaluate(
    state: dict[str, torch.Tensor], data_owner: Worker, model_owner: Worker, dealer: Worker,
    images_id: str = X, labels_id: str = Y, **options: object,
) -> EncryptedEvalResult:  # fmt: skip
    weights = {key: model_owner.send(value) for key, value in state.items()}
    return encrypted_evaluate(
        data_owner=data_owner, model_owner=model_owner, dealer=dealer, images_id=images_id,
        labels_id=labels_id, weight_ids={k: p.id for k, p in weights.items()}, **options,  # type: ignore[arg-type]
    )  # fmt: skip


def _near_ties(logits: torch.Tensor) -> int:
    """Images whose top two plaintext logits are closer than fixed point can tell apart."""
    top2 = logits.topk(2, dim=1).values
    return int(((top2[:, 0] - top2[:, 1]) < 2e-3).sum())


def test_the_polynomial_is_the_models() -> None:
    act = PolyActivation()
    assert (act.c, act.b, act.a) == POLY


@pytest.mark.parametrize("batch_size", [64, 150])
def test_the_data_owner_counts_what_plaintext_inference_counts(
    trained: dict[str, torch.Tensor], test_split: Split, batch_size: int
) -> None:
    images, labels = test_split.x, test_split.y
    plain, logits = _plain_correct(trained, images, labels)
    owner = _data_owner(images, labels)
    result = _evaluate(
        trained, owner, VirtualWorker("model-owner"), VirtualWorker("dealer"), batch_size=batch_size
    )
    assert result.num_images == len(images)
    assert abs(result.correct - plain) <= _near_ties(logits)
    assert result.offline_seconds > 0 and result.online_seconds > 0 and result.bytes_moved > 0
    assert owner.core._party.secret_count() == 0  # the session was forgotten
    assert not [key for key in owner.core._objects if key.startswith("infer/")]  # predictions freed


def test_the_coordinator_cannot_read_the_predictions_or_the_images(
    trained: dict[str, torch.Tensor], test_split: Split
) -> None:
    owner = _data_owner(test_split.x[:8], test_split.y[:8])
    with pytest.raises(Exception, match="own data"):
        owner.get(X)
    model_owner, dealer = VirtualWorker("model-owner"), VirtualWorker("dealer")
    kept: list[str] = []
    original = owner.delete

    def keep_predictions(items: object) -> int:  # a coordinator that does not free them
        kept.extend(str(i) for i in items)  # type: ignore[attr-defined]
        return 0

    owner.delete = keep_predictions  # type: ignore[method-assign]
    _evaluate(trained, owner, model_owner, dealer, batch_size=8)
    owner.delete = original  # type: ignore[method-assign]
    assert kept
    with pytest.raises(Exception, match="revealed to this worker alone"):
        owner.get(kept[0])


def test_the_data_owner_scores_only_what_was_revealed_to_it(
    trained: dict[str, torch.Tensor],
) -> None:
    owner = _data_owner(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.int64))
    crafted = owner.send(torch.eye(4, 10))  # logits a coordinator made up to probe the labels
    with pytest.raises(Exception, match="was not revealed to this worker"):
        owner.party_op("infer.score", session="s", logits_id=crafted.id, labels_id=Y, start=0)


def test_each_image_is_scored_once_and_counts_cover_several_images() -> None:
    """A coordinator that shares logits of its choosing with the data owner in the
    audience, reveals them and has them scored learns one count per image at most,
    over at least 16 images at a time."""
    from mpc.protocols.remote_shares import COORDINATOR, ShareGroup

    owner = _data_owner(torch.zeros(40, 1, 28, 28), torch.arange(40) % 10)
    with ShareGroup([VirtualWorker("a"), VirtualWorker("b")], VirtualWorker("c")) as group:

        def crafted(rows: int, name: str) -> str:
            guess = torch.zeros(rows, 10)
            guess[:, 3] = 1.0
            return group.share(guess, audience=[COORDINATOR, owner]).reveal_to(owner, obj_id=name)

        with pytest.raises(Exception, match="at least 16 images"):
            owner.party_op(
                "infer.score", session="s", logits_id=crafted(1, "one"), labels_id=Y, start=0
            )
        reply = owner.party_op(
            "infer.score", session="s", logits_id=crafted(16, "sixteen"), labels_id=Y, start=0
        )
        assert reply["count"] == 16
        with pytest.raises(Exception, match="scored already"):  # another session, same images
            owner.party_op(
                "infer.score", session="t", logits_id=crafted(16, "again"), labels_id=Y, start=8
            )


def test_bad_input_is_one_clear_error(trained: dict[str, torch.Tensor], test_split: Split) -> None:
    owner = _data_owner(test_split.x[:4], test_split.y[:4])
    partial = {k: v for k, v in trained.items() if not k.startswith("fc2")}
    with pytest.raises(MPCError, match=r"lack \['fc2.bias', 'fc2.weight'\]"):
        _evaluate(partial, owner, VirtualWorker("m"), VirtualWorker("d"))
    with pytest.raises(MPCError, match="batch size must be positive"):
        _evaluate(trained, owner, VirtualWorker("m"), VirtualWorker("d"), batch_size=0)
    flat = _data_owner(test_split.x[:4].reshape(4, 784), test_split.y[:4])
    with pytest.raises(MPCError, match=r"expected \(N, 1, 28, 28\)"):
        _evaluate(trained, flat, VirtualWorker("m"), VirtualWorker("d"))


@pytest.mark.e2e
def test_over_websocket_worker_processes_the_data_owner_evaluates_its_own_data(
    trained: dict[str, torch.Tensor],
) -> None:
    with worker_processes(3) as (data_owner, model_owner, dealer):
        # worker-0 loaded its partition itself; the test loads the same one for the reference.
        mine = load_partition(Partitioning("fashion-mnist", "iid", 3, 0, 30), 0)
        plain, logits = _plain_correct(trained, mine.x, mine.y)
        result = _evaluate(
            trained, data_owner, model_owner, dealer, images_id=TRAIN_X_ID, labels_id=TRAIN_Y_ID,
            batch_size=10, parallel=True,
        )  # fmt: skip
    assert result.num_images == len(mine)
    assert abs(result.correct - plain) <= _near_ties(logits)
