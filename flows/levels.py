"""One Prefect flow per level: baseline, sequential (1), federated (2, 3).

Every level runs the same loop — train, aggregate, evaluate, log — and differs
only in where the data lives and how a round trains (DESIGN.md, "The five
levels"). A level flow is self-contained: it takes JSON parameters, opens its
own MLflow child run under the benchmark's parent run, and returns a summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from prefect import flow

from fl.aggregation import ClientUpdate, FedAvg
from fl.data import Split
from fl.models import get_state, set_state
from flows import progress
from flows.config import LEVELS, ExperimentConfig, Level
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
    train_federated_round,
    train_sequential_round,
)
from flows.timing import OrchestrationMeter
from flows.tracking import BenchmarkTracker
from workers.base import Worker

__all__ = ["LevelSummary", "baseline_flow", "federated_flow", "run_level", "sequential_flow"]


@dataclass
class LevelSummary:
    """Final numbers of one level, returned to the benchmark flow."""

    level: str
    number: int
    run_id: str
    final_accuracy: float
    final_loss: float
    train_seconds: float
    wall_seconds: float
    bytes_total: int
    body_seconds: float
    task_overhead_seconds: float
    task_calls: int
    accuracies: list[float] = field(default_factory=list)
    slowdown_vs_baseline: float | None = None
    prefect_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _LevelContext:
    level: Level
    cfg: ExperimentConfig
    tracker: BenchmarkTracker
    run_id: str
    meter: OrchestrationMeter
    baseline_seconds: float | None
    started: float = field(default_factory=time.perf_counter)


RoundFn = Callable[[StateDict, int], RoundOutcome]


def _run_rounds(
    ctx: _LevelContext, test: Split, round_fn: RoundFn, setup_bytes: int
) -> LevelSummary:
    """The round loop shared by every level: train → aggregate → evaluate → log."""
    cfg, meter = ctx.cfg, ctx.meter
    model, state = initial_state(cfg)
    strategy = FedAvg()
    train_seconds, bytes_total = 0.0, setup_bytes
    accuracies: list[float] = []
    progress.emit_level_started(ctx.level.name, cfg.rounds)
    evaluation = None
    for round_index in range(1, cfg.rounds + 1):
        start = time.perf_counter()
        outcome = round_fn(state, round_index)
        if len(outcome.updates) == 1:
            state = dict(outcome.updates[0].state)
        else:
            state = meter.call(aggregate_updates, strategy, state, outcome.updates)
        round_seconds = time.perf_counter() - start
        train_seconds += round_seconds
        evaluation = meter.call(evaluate_state, model, state, test)
        traffic = outcome.bytes_sent + outcome.bytes_received
        bytes_total += traffic
        samples = sum(u.num_samples for u in outcome.updates)
        train_loss = sum(u.train_loss * u.num_samples for u in outcome.updates) / max(samples, 1)
        metrics = {
            "test_accuracy": evaluation.accuracy,
            "test_loss": evaluation.loss,
            "train_loss": train_loss,
            "round_seconds": round_seconds,
            "bytes_sent": float(outcome.bytes_sent),
            "bytes_received": float(outcome.bytes_received),
        }
        ctx.tracker.log_metrics(ctx.run_id, metrics, step=round_index)
        accuracies.append(evaluation.accuracy)
        progress.emit_round(ctx.level.name, round_index, metrics)
    assert evaluation is not None  # rounds >= 1 is validated by ExperimentConfig
    return LevelSummary(
        level=ctx.level.name,
        number=ctx.level.number,
        run_id=ctx.run_id,
        final_accuracy=evaluation.accuracy,
        final_loss=evaluation.loss,
        train_seconds=train_seconds,
        wall_seconds=0.0,
        bytes_total=bytes_total,
        body_seconds=0.0,
        task_overhead_seconds=0.0,
        task_calls=0,
        accuracies=accuracies,
    )


def _baseline_rounds(ctx: _LevelContext, train: Split) -> RoundFn:
    model, _ = initial_state(ctx.cfg)
    generator = torch.Generator().manual_seed(ctx.cfg.seed)

    def round_fn(state: StateDict, round_index: int) -> RoundOutcome:
        set_state(model, state)
        result = ctx.meter.call(train_centralized, model, train, ctx.cfg, generator)
        update = ClientUpdate("baseline", get_state(model), result.num_samples, result.mean_loss)
        return RoundOutcome([update], 0, 0)

    return round_fn


def _federated_rounds(ctx: _LevelContext, workers: list[Worker], sequential: bool) -> RoundFn:
    strategy = FedAvg()
    sampler = torch.Generator().manual_seed(ctx.cfg.seed)
    by_id = {w.id: w for w in workers}
    round_task = train_sequential_round if sequential else train_federated_round

    def round_fn(state: StateDict, round_index: int) -> RoundOutcome:
        chosen = strategy.sample_clients(list(by_id), ctx.cfg.fraction, sampler)
        sampled = [by_id[i] for i in chosen]
        return ctx.meter.call(round_task, sampled, state, ctx.cfg, round_index)

    return round_fn


def _finish(ctx: _LevelContext, summary: LevelSummary) -> LevelSummary:
    summary.wall_seconds = time.perf_counter() - ctx.started
    summary.body_seconds = summary.wall_seconds
    summary.task_overhead_seconds = ctx.meter.task_overhead_seconds
    summary.task_calls = ctx.meter.calls
    final = {
        "final_accuracy": summary.final_accuracy,
        "train_seconds": summary.train_seconds,
        "wall_seconds": summary.wall_seconds,
        "bytes_total": float(summary.bytes_total),
    }
    if ctx.level.number == 0:
        summary.slowdown_vs_baseline = 1.0
        final["slowdown_vs_baseline"] = 1.0
    elif ctx.baseline_seconds:
        summary.slowdown_vs_baseline = summary.train_seconds / ctx.baseline_seconds
        final["slowdown_vs_baseline"] = summary.slowdown_vs_baseline
    ctx.tracker.log_metrics(ctx.run_id, final, step=ctx.cfg.rounds)
    ctx.tracker.finish(ctx.run_id)
    progress.emit_level_finished(ctx.level.name, final)
    return summary


def _context(
    number: int, config: dict[str, Any], parent_run_id: str | None, baseline_seconds: float | None
) -> _LevelContext:
    cfg = ExperimentConfig.from_dict(config)
    level = LEVELS[number]
    tracker = BenchmarkTracker(cfg.experiment)
    tracker.parent_id = parent_run_id
    run_id = tracker.start_level(level.run_name, level.name, cfg.mlflow_params(level))
    return _LevelContext(level, cfg, tracker, run_id, OrchestrationMeter(), baseline_seconds)


def _guarded(ctx: _LevelContext, body: Callable[[], LevelSummary]) -> LevelSummary:
    """Run a level body inside its meter; mark the MLflow run failed on error."""
    try:
        with ctx.meter:
            return _finish(ctx, body())
    except BaseException:
        ctx.tracker.finish(ctx.run_id, status="FAILED")
        raise


@flow(name="fedsim-baseline", log_prints=False)
def baseline_flow(
    config: dict[str, Any], parent_run_id: str | None = None, baseline_seconds: float | None = None
) -> dict[str, Any]:
    """Level 0: centralized PyTorch training, same model, B, lr, seed and passes."""
    ctx = _context(0, config, parent_run_id, baseline_seconds)

    def body() -> LevelSummary:
        train = ctx.meter.call(load_train_set, ctx.cfg)
        test = ctx.meter.call(load_test_set, ctx.cfg)
        return _run_rounds(ctx, test, _baseline_rounds(ctx, train), 0)

    return _guarded(ctx, body).to_dict()


@flow(name="fedsim-sequential", log_prints=False)
def sequential_flow(
    config: dict[str, Any], parent_run_id: str | None = None, baseline_seconds: float | None = None
) -> dict[str, Any]:
    """Level 1: virtual workers hold the data; the model visits them in turn."""
    ctx = _context(1, config, parent_run_id, baseline_seconds)
    summary = _guarded(ctx, lambda: _federated_body(ctx, coordinator_splits=True, sequential=True))
    return summary.to_dict()


@flow(name="fedsim-federated", log_prints=False)
def federated_flow(
    config: dict[str, Any],
    level: int = 2,
    parent_run_id: str | None = None,
    baseline_seconds: float | None = None,
) -> dict[str, Any]:
    """Levels 2 and 3: local training on virtual workers, then FedAvg.

    Level 2 splits the data on the coordinator and sends the shards; level 3
    has each worker load its own partition.
    """
    if level not in (2, 3):
        raise ValueError(f"federated_flow runs levels 2 and 3, not {level}")
    ctx = _context(level, config, parent_run_id, baseline_seconds)
    summary = _guarded(
        ctx, lambda: _federated_body(ctx, coordinator_splits=level == 2, sequential=False)
    )
    return summary.to_dict()


def _federated_body(
    ctx: _LevelContext, *, coordinator_splits: bool, sequential: bool
) -> LevelSummary:
    meter = ctx.meter
    test = meter.call(load_test_set, ctx.cfg)
    if coordinator_splits:
        train = meter.call(load_train_set, ctx.cfg)
        shards = meter.call(partition_train_set, ctx.cfg, train.y)
        workers = meter.call(launch_virtual_workers, ctx.cfg, train=train, shards=shards)
    else:
        workers = meter.call(launch_virtual_workers, ctx.cfg, train=None, shards=None)
    setup_bytes = sum(w.bytes_sent + w.bytes_received for w in workers)
    try:
        return _run_rounds(ctx, test, _federated_rounds(ctx, workers, sequential), setup_bytes)
    finally:
        for worker in workers:
            worker.close()


def run_level(
    level: Level, config: dict[str, Any], parent_run_id: str | None, baseline_seconds: float | None
) -> dict[str, Any]:
    """Dispatch to the flow of ``level``."""
    if level.number == 0:
        return baseline_flow(config, parent_run_id, baseline_seconds)
    if level.number == 1:
        return sequential_flow(config, parent_run_id, baseline_seconds)
    if level.number in (2, 3):
        return federated_flow(config, level.number, parent_run_id, baseline_seconds)
    raise ValueError(f"level {level.name} has no flow in this version")
