"""The round loop shared by every level, and the flows of levels 0-3.

Levels 4 and 5 (``flows.websocket_levels``) reuse the loop over websocket workers.

Every level runs the same loop — train, aggregate, evaluate, log — and differs
only in where the data lives and how a round trains (docs/design.md, "The levels
and the round loop"). A level flow is self-contained: it takes JSON parameters, opens its
own MLflow child run under the benchmark's parent run, and returns a summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from prefect import flow

from fl.aggregation import ClientUpdate, FedAvg, Strategy
from fl.data import Split
from fl.models import get_state, set_state
from fl.privacy import BudgetExceeded
from flows import progress
from flows.client_rounds import (
    prepare_spec_clients,
    train_live_batches,
    train_spec_batches,
    with_round_metrics,
)
from flows.client_training import train_sequential_round
from flows.config import ExperimentConfig
from flows.defence import Defence, dp_tags, poisoned_indices
from flows.level import Level, level_named
from flows.secure import secure_aggregate_round
from flows.tasks import (
    RoundOutcome,
    StateDict,
    aggregate_updates,
    evaluate_state,
    initial_state,
    launch_virtual_workers,
    load_test_set,
    load_train_set,
    partition_train_set,
    train_centralized,
)
from flows.timing import OrchestrationMeter
from flows.tracking import BenchmarkTracker, status_after
from workers.base import Worker
from workers.model_pool import ModelPool

__all__ = [
    "LevelContext",
    "LevelSummary",
    "RoundFn",
    "baseline_flow",
    "federated_flow",
    "run_level_body",
    "run_rounds",
    "sequential_flow",
    "slowdown",
]


@dataclass
class LevelSummary:
    """Final numbers of one level, returned to the benchmark flow."""

    level: str
    number: int
    run_id: str
    run_name: str
    final_accuracy: float
    final_loss: float
    train_seconds: float
    samples_trained: int
    bytes_total: int
    accuracies: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    body_seconds: float = 0.0
    task_overhead_seconds: float = 0.0
    task_calls: int = 0
    slowdown_vs_baseline: float | None = None
    prefect_seconds: float | None = None
    comm_seconds_mean: float = 0.0
    # encrypted-eval only: its plaintext reference, timed in the same process
    slowdown_vs_plaintext: float | None = None
    plaintext_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LevelContext:
    """What one level's round loop needs: its config, MLflow run, meter and strategy."""

    level: Level
    cfg: ExperimentConfig
    tracker: BenchmarkTracker
    run_id: str
    baseline: dict[str, float] | None
    entered: float
    meter: OrchestrationMeter = field(default_factory=OrchestrationMeter)
    strategy: Strategy = field(default_factory=FedAvg)
    started: float = field(default_factory=time.perf_counter)
    # FedAvg levels: robust aggregation, attacks and DP (flows.defence).
    defence: Defence | None = None
    # The modules every virtual worker of the level borrows (workers.model_pool).
    models: ModelPool = field(default_factory=ModelPool)
    # Indices of the clients each round sampled, logged as clients.json (not for
    # client-level DP with private noise: its cohorts are secret).
    sampled: list[list[int]] = field(default_factory=list)

    def defend(self, worker_ids: Sequence[str]) -> None:
        """Aggregate with the configured aggregator, attackers and DP from now on."""
        self.defence = Defence(self.cfg, worker_ids)
        self.strategy = self.defence.strategy
        if tags := dp_tags(self.cfg):
            self.tracker.set_tags(self.run_id, tags)


RoundFn = Callable[[StateDict, int], RoundOutcome]


def run_rounds(ctx: LevelContext, test: Split, round_fn: RoundFn, setup_bytes: int) -> LevelSummary:
    """The round loop shared by every level: train → aggregate → evaluate → log."""
    cfg, meter = ctx.cfg, ctx.meter
    model, state = initial_state(cfg)
    train_seconds, bytes_total, samples_trained, comm_seconds = 0.0, setup_bytes, 0, 0.0
    accuracies: list[float] = []
    progress.emit_level_started(ctx.level.run_name, cfg.rounds)
    evaluation = None
    for round_index in range(1, cfg.rounds + 1):
        if not _within_budget(ctx, round_index):
            break
        start = time.perf_counter()
        outcome = round_fn(state, round_index)
        if outcome.global_state is not None:  # averaged already: opened, or folded as streamed
            state = _opened(ctx, state, outcome)
        elif outcome.aggregated:
            state = dict(outcome.updates[0].state)
        else:
            state = meter.call(aggregate_updates, ctx.strategy, state, outcome.updates)
        round_seconds = time.perf_counter() - start
        train_seconds += round_seconds
        evaluation = meter.call(evaluate_state, model, state, test)
        bytes_total += outcome.bytes_sent + outcome.bytes_received
        comm_seconds += outcome.comm_seconds
        samples = sum(u.num_samples for u in outcome.updates)
        samples_trained += samples * cfg.epochs
        train_loss = sum(u.train_loss * u.num_samples for u in outcome.updates) / max(samples, 1)
        metrics = {
            "test_accuracy": evaluation.accuracy,
            "test_loss": evaluation.loss,
            "train_loss": train_loss,
            "round_seconds": round_seconds,
            "bytes_sent": float(outcome.bytes_sent),
            "bytes_received": float(outcome.bytes_received),
            "dropped_workers": float(len(outcome.dropped)),
            "comm_seconds": outcome.comm_seconds,
            **outcome.metrics,
            **(ctx.defence.after_round(outcome.updates) if ctx.defence else {}),
        }
        ctx.tracker.log_metrics(ctx.run_id, metrics, step=round_index)
        accuracies.append(evaluation.accuracy)
        progress.emit_round(ctx.level.run_name, round_index, metrics)
    if evaluation is None:  # the privacy budget allowed no round: the initial model
        evaluation = meter.call(evaluate_state, model, state, test)
    return LevelSummary(
        level=ctx.level.name,
        number=ctx.level.number,
        run_id=ctx.run_id,
        run_name=ctx.level.run_name,
        final_accuracy=evaluation.accuracy,
        final_loss=evaluation.loss,
        train_seconds=train_seconds,
        samples_trained=samples_trained,
        bytes_total=bytes_total,
        accuracies=accuracies,
        comm_seconds_mean=comm_seconds / cfg.rounds,
    )


def _within_budget(ctx: LevelContext, round_index: int) -> bool:
    """False, with a warning and an MLflow tag, if the round would exceed the DP budget."""
    if ctx.defence is None:
        return True
    try:
        ctx.defence.before_round(round_index)
    except BudgetExceeded as exc:
        progress.emit_warning(f"{ctx.level.run_name}: {exc}")
        ctx.tracker.set_tags(ctx.run_id, {"dp_stopped": str(exc)})
        return False
    return True


def _opened(ctx: LevelContext, state: StateDict, outcome: RoundOutcome) -> StateDict:
    """The round's average, opened by secure aggregation or folded as the clients
    streamed in, with client-level DP noise if configured."""
    assert outcome.global_state is not None
    if ctx.defence is None:
        return outcome.global_state
    return ctx.defence.opened(state, outcome.global_state, len(outcome.updates))


def _baseline_rounds(ctx: LevelContext, train: Split) -> RoundFn:
    model, _ = initial_state(ctx.cfg)
    generator = torch.Generator().manual_seed(ctx.cfg.seed)

    def round_fn(state: StateDict, round_index: int) -> RoundOutcome:
        set_state(model, state)
        result = ctx.meter.call(train_centralized, model, train, ctx.cfg, generator)
        update = ClientUpdate("baseline", get_state(model), result.num_samples, result.mean_loss)
        return RoundOutcome([update], 0, 0, aggregated=True)

    return round_fn


def _federated_rounds(
    ctx: LevelContext, workers: list[Worker], *, sequential: bool = False
) -> RoundFn:
    """Rounds over in-process virtual workers (levels 1-3), batched into few tasks."""
    sampler = torch.Generator().manual_seed(ctx.cfg.seed)
    by_id = {w.id: (index, w) for index, w in enumerate(workers)}

    def round_fn(state: StateDict, round_index: int) -> RoundOutcome:
        chosen = ctx.strategy.sample_clients(list(by_id), ctx.cfg.fraction, sampler)
        sampled = [by_id[client_id] for client_id in chosen]
        ctx.sampled.append([index for index, _ in sampled])
        if sequential:
            return ctx.meter.call(train_sequential_round, sampled, state, ctx.cfg, round_index)
        outcome, stats = train_live_batches(
            ctx.meter, sampled, state, ctx.cfg, round_index, stream=_streams(ctx),
            models=ctx.models,
        )  # fmt: skip
        if ctx.cfg.aggregation in ("secure", "he"):
            outcome = ctx.meter.call(
                secure_aggregate_round, ctx.cfg, sampled, outcome, state, round_index
            )
        return with_round_metrics(outcome, stats)

    return round_fn


def _spec_rounds(ctx: LevelContext, ids: list[str], poisoned: frozenset[int]) -> RoundFn:
    """Level 3 with plain aggregation: clients exist only while their batch trains,
    materialised from their partition descriptors in this process or on Dask."""
    sampler = torch.Generator().manual_seed(ctx.cfg.seed)
    index_of = {worker_id: index for index, worker_id in enumerate(ids)}
    on_dask = ctx.cfg.task_runner == "dask"

    def round_fn(state: StateDict, round_index: int) -> RoundOutcome:
        chosen = [index_of[c] for c in ctx.strategy.sample_clients(ids, ctx.cfg.fraction, sampler)]
        ctx.sampled.append(chosen)
        specs = [(index, index in poisoned) for index in chosen]
        outcome, stats = train_spec_batches(
            ctx.meter, specs, state, ctx.cfg, round_index, stream=_streams(ctx), on_dask=on_dask
        )
        return with_round_metrics(outcome, stats)

    return round_fn


def _streams(ctx: LevelContext) -> bool:
    """Whether rounds fold updates into FedAvg's sum as they arrive (flows.client_rounds)."""
    return ctx.strategy.streaming and ctx.cfg.aggregation == "plain"


def slowdown(summary: LevelSummary, baseline: dict[str, float]) -> float:
    """Training seconds over the baseline's, for the same amount of work.

    With every client taking part (C = 1) both sides pass over the same samples
    the same number of times and this is the plain ratio of seconds (docs/design.md, "Slowdown").
    With C < 1 a level trains on fewer samples than the baseline, so seconds are
    compared per sample trained rather than letting sampling pass for speed.
    """
    per_sample = summary.train_seconds / max(summary.samples_trained, 1)
    baseline_per_sample = baseline["train_seconds"] / max(baseline["samples_trained"], 1)
    return per_sample / baseline_per_sample


def _finish(ctx: LevelContext, summary: LevelSummary) -> LevelSummary:
    summary.wall_seconds = time.perf_counter() - ctx.started
    summary.task_overhead_seconds = ctx.meter.task_overhead_seconds
    summary.task_calls = ctx.meter.calls
    final = {
        "final_accuracy": summary.final_accuracy,
        "train_seconds": summary.train_seconds,
        "wall_seconds": summary.wall_seconds,
        "bytes_total": float(summary.bytes_total),
        "samples_trained": float(summary.samples_trained),
    }
    if ctx.level.centralized:
        summary.slowdown_vs_baseline = 1.0
    elif ctx.baseline and ctx.level.slowdown:
        summary.slowdown_vs_baseline = slowdown(summary, ctx.baseline)
    if summary.slowdown_vs_baseline is not None:
        final["slowdown_vs_baseline"] = summary.slowdown_vs_baseline
    ctx.tracker.log_metrics(ctx.run_id, final, step=ctx.cfg.rounds)
    if ctx.defence is not None and ctx.defence.flags:
        ctx.tracker.log_json(ctx.run_id, ctx.defence.flags, "flags.json")
    # A private client-DP cohort stays secret: amplification by sampling counts on it.
    if ctx.sampled and not (ctx.cfg.dp == "client" and ctx.cfg.dp_noise_seed is None):
        rounds = [{"round": r, "clients": c} for r, c in enumerate(ctx.sampled, start=1)]
        ctx.tracker.log_json(ctx.run_id, rounds, "clients.json")
    ctx.tracker.finish(ctx.run_id)
    progress.emit_level_finished(ctx.level.run_name, final)
    # Everything from entering the flow function to here is fedsim's own time
    # (MLflow calls included); the benchmark flow attributes the rest to Prefect.
    summary.body_seconds = time.perf_counter() - ctx.entered
    return summary


def run_level_body(
    name: str,
    config: dict[str, Any],
    parent_run_id: str | None,
    baseline: dict[str, float] | None,
    body: Callable[[LevelContext], LevelSummary],
) -> dict[str, Any]:
    """Open the level's MLflow run, run ``body`` inside its meter, close the run."""
    entered = time.perf_counter()
    cfg = ExperimentConfig.from_dict(config)
    level = level_named(name, cfg.aggregation)
    tracker = BenchmarkTracker(cfg.experiment)
    tracker.parent_id = parent_run_id
    run_id = tracker.start_level(level.run_name, level.name, cfg.mlflow_params(level))
    ctx = LevelContext(level, cfg, tracker, run_id, baseline, entered)
    try:
        with ctx.meter:
            summary = body(ctx)
        return _finish(ctx, summary).to_dict()
    except BaseException as error:
        tracker.finish(run_id, status=status_after(error))
        raise


def _baseline_body(ctx: LevelContext) -> LevelSummary:
    train = ctx.meter.call(load_train_set, ctx.cfg)
    test = ctx.meter.call(load_test_set, ctx.cfg)
    return run_rounds(ctx, test, _baseline_rounds(ctx, train), 0)


def _federated_body(
    ctx: LevelContext, *, coordinator_splits: bool, sequential: bool
) -> LevelSummary:
    meter = ctx.meter
    test = meter.call(load_test_set, ctx.cfg)
    # Level 1 is a clean reference: attacks and defences apply to FedAvg levels.
    poisoned = frozenset() if sequential else poisoned_indices(ctx.cfg)
    if not coordinator_splits and not sequential and ctx.cfg.aggregation == "plain":
        # No client is kept between rounds: a round materialises the ones it samples.
        ids = [f"worker-{index}" for index in range(ctx.cfg.workers)]
        ctx.defend(ids)
        prepare_spec_clients(meter, ctx.cfg)
        return run_rounds(ctx, test, _spec_rounds(ctx, ids, poisoned), 0)
    train = shards = None
    if coordinator_splits:
        train = meter.call(load_train_set, ctx.cfg)
        shards = meter.call(partition_train_set, ctx.cfg, train.y)
    workers = meter.call(
        launch_virtual_workers,
        ctx.cfg,
        train=train,
        shards=shards,
        poisoned=poisoned,
        models=ctx.models,
    )
    del train, shards  # the workers hold their own copies of their shards
    setup_bytes = sum(w.bytes_sent + w.bytes_received for w in workers)
    if not sequential:
        ctx.defend([w.id for w in workers])
    try:
        rounds = _federated_rounds(ctx, workers, sequential=sequential)
        return run_rounds(ctx, test, rounds, setup_bytes)
    finally:
        for worker in workers:
            worker.close()


@flow(name="fedsim-baseline", log_prints=False)
def baseline_flow(
    config: dict[str, Any],
    parent_run_id: str | None = None,
    baseline: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Level 0: centralized PyTorch training, same model, B, lr, seed and passes."""
    return run_level_body("baseline", config, parent_run_id, baseline, _baseline_body)


@flow(name="fedsim-sequential", log_prints=False)
def sequential_flow(
    config: dict[str, Any],
    parent_run_id: str | None = None,
    baseline: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Level 1: virtual workers hold the data; the model visits them in turn."""

    def body(ctx: LevelContext) -> LevelSummary:
        return _federated_body(ctx, coordinator_splits=True, sequential=True)

    return run_level_body("sequential", config, parent_run_id, baseline, body)


@flow(name="fedsim-federated", log_prints=False)
def federated_flow(
    config: dict[str, Any],
    parent_run_id: str | None = None,
    baseline: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Level 2: the coordinator splits the data and sends the shards to virtual
    workers; local training, then FedAvg."""
    return run_level_body("federated", config, parent_run_id, baseline, _fedavg_body)


@flow(name="fedsim-decentralized", log_prints=False)
def decentralized_flow(
    config: dict[str, Any],
    parent_run_id: str | None = None,
    baseline: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Level 3: each virtual worker loads its own partition; local training, then FedAvg."""
    return run_level_body("decentralized", config, parent_run_id, baseline, _fedavg_body)


def _fedavg_body(ctx: LevelContext) -> LevelSummary:
    return _federated_body(ctx, coordinator_splits=not ctx.level.own_data, sequential=False)
