"""One Prefect flow per level: baseline, sequential (1), federated (2, 3).

Every level runs the same loop — train, aggregate, evaluate, log — and differs
only in where the data lives and how a round trains (DESIGN.md, "The five
levels"). A level flow is self-contained: it takes JSON parameters, opens its
own MLflow child run under the benchmark's parent run, and returns a summary.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from prefect import flow

from fl.aggregation import ClientUpdate, FedAvg, Strategy
from fl.data import Split
from fl.models import get_state, set_state
from flows import progress
from flows.config import LEVELS, ExperimentConfig, Level
from flows.tasks import (
    RoundOutcome,
    StateDict,
    aggregate_updates,
    connect_remote_workers,
    evaluate_state,
    initial_state,
    launch_virtual_workers,
    launch_worker_processes,
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
from workers.errors import WorkerError
from workers.fleet import Fleet
from workers.launcher import LocalWorkerPool

__all__ = [
    "LevelSummary",
    "baseline_flow",
    "federated_flow",
    "run_level",
    "sequential_flow",
    "slowdown",
    "websocket_local_flow",
    "websocket_remote_flow",
]


@dataclass
class LevelSummary:
    """Final numbers of one level, returned to the benchmark flow."""

    level: str
    number: int
    run_id: str
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _LevelContext:
    level: Level
    cfg: ExperimentConfig
    tracker: BenchmarkTracker
    run_id: str
    baseline: dict[str, float] | None
    entered: float
    meter: OrchestrationMeter = field(default_factory=OrchestrationMeter)
    strategy: Strategy = field(default_factory=FedAvg)
    started: float = field(default_factory=time.perf_counter)


RoundFn = Callable[[StateDict, int], RoundOutcome]


def _run_rounds(
    ctx: _LevelContext, test: Split, round_fn: RoundFn, setup_bytes: int
) -> LevelSummary:
    """The round loop shared by every level: train → aggregate → evaluate → log."""
    cfg, meter = ctx.cfg, ctx.meter
    model, state = initial_state(cfg)
    train_seconds, bytes_total, samples_trained, comm_seconds = 0.0, setup_bytes, 0, 0.0
    accuracies: list[float] = []
    progress.emit_level_started(ctx.level.name, cfg.rounds)
    evaluation = None
    for round_index in range(1, cfg.rounds + 1):
        start = time.perf_counter()
        outcome = round_fn(state, round_index)
        if outcome.aggregated:
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
        samples_trained=samples_trained,
        bytes_total=bytes_total,
        accuracies=accuracies,
        comm_seconds_mean=comm_seconds / cfg.rounds,
    )


def _baseline_rounds(ctx: _LevelContext, train: Split) -> RoundFn:
    model, _ = initial_state(ctx.cfg)
    generator = torch.Generator().manual_seed(ctx.cfg.seed)

    def round_fn(state: StateDict, round_index: int) -> RoundOutcome:
        set_state(model, state)
        result = ctx.meter.call(train_centralized, model, train, ctx.cfg, generator)
        update = ClientUpdate("baseline", get_state(model), result.num_samples, result.mean_loss)
        return RoundOutcome([update], 0, 0, aggregated=True)

    return round_fn


def _federated_rounds(
    ctx: _LevelContext, workers: list[Worker], *, sequential: bool = False
) -> RoundFn:
    """Rounds over in-process virtual workers (levels 1-3), one client after another."""
    sampler = torch.Generator().manual_seed(ctx.cfg.seed)
    by_id = {w.id: (index, w) for index, w in enumerate(workers)}

    def round_fn(state: StateDict, round_index: int) -> RoundOutcome:
        chosen = ctx.strategy.sample_clients(list(by_id), ctx.cfg.fraction, sampler)
        sampled = [by_id[client_id] for client_id in chosen]
        if sequential:
            return ctx.meter.call(train_sequential_round, sampled, state, ctx.cfg, round_index)
        return ctx.meter.call(train_federated_round, sampled, state, ctx.cfg, round_index)

    return round_fn


def slowdown(summary: LevelSummary, baseline: dict[str, float]) -> float:
    """Training seconds over the baseline's, for the same amount of work.

    With every client taking part (C = 1) both sides pass over the same samples
    the same number of times and this is the plain ratio of seconds (DESIGN.md).
    With C < 1 a level trains on fewer samples than the baseline, so seconds are
    compared per sample trained rather than letting sampling pass for speed.
    """
    per_sample = summary.train_seconds / max(summary.samples_trained, 1)
    baseline_per_sample = baseline["train_seconds"] / max(baseline["samples_trained"], 1)
    return per_sample / baseline_per_sample


def _finish(ctx: _LevelContext, summary: LevelSummary) -> LevelSummary:
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
    if ctx.level.number == 0:
        summary.slowdown_vs_baseline = 1.0
    elif ctx.baseline:
        summary.slowdown_vs_baseline = slowdown(summary, ctx.baseline)
    if summary.slowdown_vs_baseline is not None:
        final["slowdown_vs_baseline"] = summary.slowdown_vs_baseline
    ctx.tracker.log_metrics(ctx.run_id, final, step=ctx.cfg.rounds)
    ctx.tracker.finish(ctx.run_id)
    progress.emit_level_finished(ctx.level.name, final)
    # Everything from entering the flow function to here is fedsim's own time
    # (MLflow calls included); the benchmark flow attributes the rest to Prefect.
    summary.body_seconds = time.perf_counter() - ctx.entered
    return summary


def _run_level(
    number: int,
    config: dict[str, Any],
    parent_run_id: str | None,
    baseline: dict[str, float] | None,
    body: Callable[[_LevelContext], LevelSummary],
) -> dict[str, Any]:
    """Open the level's MLflow run, run ``body`` inside its meter, close the run."""
    entered = time.perf_counter()
    cfg = ExperimentConfig.from_dict(config)
    level = LEVELS[number]
    tracker = BenchmarkTracker(cfg.experiment)
    tracker.parent_id = parent_run_id
    run_id = tracker.start_level(level.run_name, level.name, cfg.mlflow_params(level))
    ctx = _LevelContext(level, cfg, tracker, run_id, baseline, entered)
    try:
        with ctx.meter:
            summary = body(ctx)
        return _finish(ctx, summary).to_dict()
    except BaseException:
        tracker.finish(run_id, status="FAILED")
        raise


def _baseline_body(ctx: _LevelContext) -> LevelSummary:
    train = ctx.meter.call(load_train_set, ctx.cfg)
    test = ctx.meter.call(load_test_set, ctx.cfg)
    return _run_rounds(ctx, test, _baseline_rounds(ctx, train), 0)


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
        rounds = _federated_rounds(ctx, workers, sequential=sequential)
        return _run_rounds(ctx, test, rounds, setup_bytes)
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
    return _run_level(0, config, parent_run_id, baseline, _baseline_body)


@flow(name="fedsim-sequential", log_prints=False)
def sequential_flow(
    config: dict[str, Any],
    parent_run_id: str | None = None,
    baseline: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Level 1: virtual workers hold the data; the model visits them in turn."""

    def body(ctx: _LevelContext) -> LevelSummary:
        return _federated_body(ctx, coordinator_splits=True, sequential=True)

    return _run_level(1, config, parent_run_id, baseline, body)


@flow(name="fedsim-federated", log_prints=False)
def federated_flow(
    config: dict[str, Any],
    level: int = 2,
    parent_run_id: str | None = None,
    baseline: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Levels 2 and 3: local training on virtual workers, then FedAvg.

    Level 2 splits the data on the coordinator and sends the shards; level 3
    has each worker load its own partition.
    """
    if level not in (2, 3):
        raise ValueError(f"federated_flow runs levels 2 and 3, not {level}")

    def body(ctx: _LevelContext) -> LevelSummary:
        return _federated_body(ctx, coordinator_splits=level == 2, sequential=False)

    return _run_level(level, config, parent_run_id, baseline, body)


def _fleet_rounds(ctx: _LevelContext, fleet: Fleet) -> RoundFn:
    """Rounds over websocket workers: parallel training, tolerant of dropped workers.

    Sampling is by position, exactly as for the virtual levels, so the same seed
    samples the same clients. Workers that cannot be reached, or fail during
    the round, are dropped for this round only (re-dialled before the next);
    the round fails only when fewer than ``min_workers`` updates arrive.
    """
    sampler = torch.Generator().manual_seed(ctx.cfg.seed)
    positions = [str(index) for index in range(len(fleet))]

    def round_fn(state: StateDict, round_index: int) -> RoundOutcome:
        chosen = [int(i) for i in ctx.strategy.sample_clients(positions, ctx.cfg.fraction, sampler)]
        live, down = fleet.available(chosen)
        outcome = ctx.meter.call(train_federated_round, live, state, ctx.cfg, round_index, True)
        for index in outcome.dropped:
            fleet.mark_failed(index)
        dropped = tuple(sorted((*down, *outcome.dropped)))
        if dropped:
            progress.emit_warning(
                f"round {round_index}: {len(dropped)} of {len(chosen)} workers dropped "
                f"({', '.join(f'#{i}' for i in dropped)}); FedAvg over the other "
                f"{len(outcome.updates)}"
            )
        if len(outcome.updates) < ctx.cfg.min_workers:
            raise WorkerError(
                f"round {round_index}: {len(outcome.updates)} workers answered, fewer than "
                f"--min-workers {ctx.cfg.min_workers}"
            )
        return dataclasses.replace(outcome, dropped=dropped)

    return round_fn


def _fleet_body(
    ctx: _LevelContext, start: Callable[[], Fleet], stop: Callable[[], None]
) -> LevelSummary:
    test = ctx.meter.call(load_test_set, ctx.cfg)
    try:
        fleet = start()
        setup_bytes = sum(w.bytes_sent + w.bytes_received for w in fleet.clients)
        return _run_rounds(ctx, test, _fleet_rounds(ctx, fleet), setup_bytes)
    finally:
        stop()  # every process / connection, also on failure and Ctrl-C


def _local_processes_body(ctx: _LevelContext) -> LevelSummary:
    pools: list[LocalWorkerPool] = []

    def start() -> Fleet:
        pool = ctx.meter.call(launch_worker_processes, ctx.cfg)
        pools.append(pool)
        assert pool.fleet is not None
        return pool.fleet

    def stop() -> None:
        for pool in pools:
            pool.stop()

    return _fleet_body(ctx, start, stop)


def _remote_body(ctx: _LevelContext) -> LevelSummary:
    fleets: list[Fleet] = []

    def start() -> Fleet:
        fleets.append(ctx.meter.call(connect_remote_workers, ctx.cfg))
        return fleets[0]

    def stop() -> None:
        for fleet in fleets:
            fleet.close()  # the workers keep running: they were started independently

    return _fleet_body(ctx, start, stop)


@flow(name="fedsim-websocket-local", log_prints=False)
def websocket_local_flow(
    config: dict[str, Any],
    parent_run_id: str | None = None,
    baseline: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Level 4: one websocket worker process per client on this host, each loading
    its own partition; parallel local training; FedAvg."""
    return _run_level(4, config, parent_run_id, baseline, _local_processes_body)


@flow(name="fedsim-websocket-remote", log_prints=False)
def websocket_remote_flow(
    config: dict[str, Any],
    parent_run_id: str | None = None,
    baseline: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Level 5: independently started TLS workers, each holding its own partition,
    reached by address from a workers file; every connection authenticated."""
    return _run_level(5, config, parent_run_id, baseline, _remote_body)


def run_level(
    level: Level,
    config: dict[str, Any],
    parent_run_id: str | None,
    baseline: dict[str, float] | None,
) -> dict[str, Any]:
    """Dispatch to the flow of ``level``; ``baseline`` holds the baseline's
    ``train_seconds`` and ``samples_trained`` once it has run."""
    if level.number == 0:
        return baseline_flow(config, parent_run_id, baseline)
    if level.number == 1:
        return sequential_flow(config, parent_run_id, baseline)
    if level.number in (2, 3):
        return federated_flow(config, level.number, parent_run_id, baseline)
    if level.number == 4:
        return websocket_local_flow(config, parent_run_id, baseline)
    if level.number == 5:
        return websocket_remote_flow(config, parent_run_id, baseline)
    raise ValueError(f"level {level.name} has no flow in this version")
