"""The ``encrypted-eval`` level: the MPC-friendly CNN classifies secret-shared test images.

The level trains the MPC-friendly CNN (``mpc-cnn``) with plain PyTorch on the
run's training data, evaluates it in plaintext, then evaluates the same model
on the same images under MPC (``mpc.protocols.encrypted_inference``, on remote
shared tensors). Three virtual workers take the roles: the data owner holds
the test images and labels as its own data (this coordinator never sends
them, and cannot read them back), the model owner holds the trained weights
(this coordinator's, sent to it), and the dealer deals the correlated
randomness. Only the data owner sees predictions; the coordinator learns the
number it classified correctly. The workers live in this process, so the
trust domains are simulated the way level 3's are (docs/threat-model.md). It
logs both accuracies and the slowdown of encrypted over plaintext inference,
timed in the same process.

Training length: ``--rounds × --epochs`` passes (the work a FedAvg level does
per client), capped at 120,000 samples so the full profile stays in minutes.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from fl.data import Split
from fl.models import build_model
from fl.training import TrainConfig, TrainResult, evaluate, train_local
from flows import progress
from flows.config import ExperimentConfig
from flows.round_loop import LevelContext, LevelSummary, run_level_body
from flows.rounds.tasks import load_test_set, load_train_set
from flows.timing import timed_body
from mpc.protocols.encrypted_inference.coordinator import (
    MODEL,
    EncryptedEvalResult,
    encrypted_evaluate,
)
from workers.core import WorkerCore
from workers.virtual import VirtualWorker

__all__ = ["encrypted_eval_flow", "training_epochs"]

_MAX_TRAIN_SAMPLES = 120_000
BATCH_SIZE = 250  # images per encrypted batch: every tensor < 32 MiB, every frame < 256 MiB
TEST_X, TEST_Y = "data/test/x", "data/test/y"  # the data owner's own objects


def training_epochs(cfg: ExperimentConfig, train_size: int) -> int:
    """Epochs of plain training for the evaluated model (see the module docstring)."""
    return max(1, min(cfg.rounds * cfg.epochs, _MAX_TRAIN_SAMPLES // max(train_size, 1)))


@task(name="train-mpc-cnn", cache_policy=NO_CACHE)
@timed_body
def train_mpc_model(
    cfg: ExperimentConfig, train: Split
) -> tuple[dict[str, torch.Tensor], TrainResult]:
    model = build_model(MODEL, seed=cfg.seed)
    config = TrainConfig(
        epochs=training_epochs(cfg, len(train)), batch_size=cfg.batch_size, lr=cfg.lr
    )
    result = train_local(model, train, config, torch.Generator().manual_seed(cfg.seed))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, result


@task(name="plaintext-eval", cache_policy=NO_CACHE)
@timed_body
def plaintext_eval(state: dict[str, torch.Tensor], test: Split) -> tuple[float, float]:
    """Accuracy and seconds of plain PyTorch inference, in the batches MPC uses."""
    model = build_model(MODEL)
    model.load_state_dict(state)
    evaluate(model, test.subset(torch.arange(min(len(test), BATCH_SIZE))))  # warm-up, untimed
    start = time.perf_counter()
    result = evaluate(model, test, batch_size=BATCH_SIZE)
    return result.accuracy, time.perf_counter() - start


@task(name="encrypted-eval", cache_policy=NO_CACHE)
@timed_body
def run_encrypted_eval(state: dict[str, torch.Tensor], test: Split) -> EncryptedEvalResult:
    own = {TEST_X: test.x, TEST_Y: test.y}
    core = WorkerCore("data-owner", objects=own, private=frozenset(own))
    data_owner = VirtualWorker("data-owner", core=core)
    model_owner, dealer = VirtualWorker("model-owner"), VirtualWorker("dealer")
    try:
        weights = {key: model_owner.send(value) for key, value in state.items()}
        return encrypted_evaluate(
            data_owner=data_owner,
            model_owner=model_owner,
            dealer=dealer,
            images_id=TEST_X,
            labels_id=TEST_Y,
            weight_ids={key: pointer.id for key, pointer in weights.items()},
            batch_size=BATCH_SIZE,
        )
    finally:
        for worker in (data_owner, model_owner, dealer):
            worker.close()


def _body(ctx: LevelContext) -> LevelSummary:
    cfg, meter = ctx.cfg, ctx.meter
    train = meter.call(load_train_set, cfg)
    test = meter.call(load_test_set, cfg)
    progress.emit_level_started(ctx.level.run_name, 1)
    start = time.perf_counter()
    state, trained = meter.call(train_mpc_model, cfg, train)
    train_seconds = time.perf_counter() - start
    plain_accuracy, plain_seconds = meter.call(plaintext_eval, state, test)
    result = meter.call(run_encrypted_eval, state, test)
    slowdown = result.seconds / plain_seconds
    metrics = {
        "plaintext_accuracy": plain_accuracy,
        "plaintext_seconds": plain_seconds,
        "plaintext_images_per_second": len(test) / plain_seconds,
        "encrypted_seconds": result.seconds,
        "images_per_second": result.num_images / result.seconds,
        "slowdown_vs_plaintext": slowdown,
        "online_seconds": result.online_seconds,
        "offline_seconds": result.offline_seconds,
        "setup_seconds": result.setup_seconds,
        "accuracy_gap_points": 100 * (plain_accuracy - result.accuracy),
    }
    ctx.tracker.log_metrics(ctx.run_id, metrics, step=cfg.rounds)
    progress.emit_round(
        ctx.level.run_name, 1, {"test_accuracy": result.accuracy, "train_loss": trained.mean_loss}
    )
    return LevelSummary(
        level=ctx.level.name,
        number=ctx.level.number,
        run_id=ctx.run_id,
        run_name=ctx.level.run_name,
        final_accuracy=result.accuracy,
        final_loss=float("nan"),  # the data owner learns predictions only, not logits
        train_seconds=train_seconds,
        samples_trained=trained.num_samples,
        bytes_total=result.bytes_moved,
        accuracies=[result.accuracy],
        slowdown_vs_plaintext=slowdown,
        plaintext_accuracy=plain_accuracy,
    )


@flow(name="fedsim-encrypted-eval", log_prints=False)
def encrypted_eval_flow(
    config: dict[str, Any],
    parent_run_id: str | None = None,
    baseline: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Encrypted evaluation of the MPC-friendly CNN on the run's test images."""
    return run_level_body("encrypted-eval", config, parent_run_id, baseline, _body)
