"""The round loop every level shares: train, aggregate, evaluate, log.

Levels differ only in where the data lives and how a round trains (docs/design.md,
"The levels and the round loop"); each level's flow hands :func:`run_level_body`
a body, which runs :func:`run_rounds` over its own round function. A level flow
is self-contained: it takes JSON parameters, opens its own MLflow child run
under the benchmark's parent run, and returns a summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from fl.aggregation import FedAvg, Strategy
from fl.data import Split
from fl.privacy import BudgetExceeded
from fl.strategies import check_aggregate
from fl.tasks import Task, TaskError
from flows import progress
from flows.config import ExperimentConfig
from flows.defence import Defence, dp_tags
from flows.level import Level, level_named
from flows.machine_load import LoadMeter, SystemMetrics
from flows.rounds.outcome import RoundOutcome, StateDict
from flows.rounds.tasks import evaluate_state, finish_round, initial_state
from flows.timing import OrchestrationMeter
from flows.tracking import BenchmarkTracker, status_after
from workers.model_pool import ModelPool

__all__ = [
    "LevelContext",
    "LevelSummary",
    "RoundFn",
    "run_level_body",
    "run_rounds",
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
    # Cores other processes held on average while the level ran (flows.machine_load).
    machine_other_cores: float | None = None
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


def check_finite(task: Task, state: StateDict, round_index: int) -> None:
    """A TaskError naming the task when the round's model holds NaN or infinity: the
    rounds after it would only report chance accuracy and a NaN loss."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise TaskError(
                f"task {task.name!r} diverged in round {round_index}: {key!r} holds NaN or "
                "infinity (a smaller --lr, or a loss that stays finite)"
            )


def run_rounds(ctx: LevelContext, test: Split, round_fn: RoundFn, setup_bytes: int) -> LevelSummary:
    """The round loop shared by every level: train → aggregate → evaluate → log."""
    cfg, meter = ctx.cfg, ctx.meter
    model, state = initial_state(cfg)
    task = cfg.learning_task  # found once (a built-in task looks for its data root), not per round
    train_seconds, bytes_total, samples_trained, comm_seconds = 0.0, setup_bytes, 0, 0.0
    accuracies: list[float] = []
    progress.emit_level_started(ctx.level.run_name, cfg.rounds)
    evaluation = None
    for round_index in range(1, cfg.rounds + 1):
        if not _within_budget(ctx, round_index):
            break
        start = time.perf_counter()
        outcome = round_fn(state, round_index)
        assert outcome.aggregate is not None, "a round function returns its round's aggregate"
        previous, state = state, meter.call(finish_round, outcome.aggregate)
        if cfg.strategy != "fedavg":  # a chosen strategy is named if its state is unusable
            check_aggregate(ctx.strategy, previous, state)
        check_finite(task, state, round_index)
        round_seconds = time.perf_counter() - start
        train_seconds += round_seconds
        evaluation = meter.call(evaluate_state, model, state, test, task)
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
        _log_round(round_index, cfg.rounds, metrics)
    if evaluation is None:  # the privacy budget allowed no round: the initial model
        evaluation = meter.call(evaluate_state, model, state, test, task)
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


def _log_round(round_index: int, rounds: int, metrics: dict[str, float]) -> None:
    """One line per round in the flow run's log: the Prefect UI shows the run's progress."""
    try:
        logger = get_run_logger()
    except MissingContextError:  # the loop run outside a flow (a test, a library caller)
        return
    logger.info(
        "round %d/%d: test accuracy %.2f%%, loss %.4f, %.1f s",
        round_index, rounds, 100 * metrics["test_accuracy"], metrics["test_loss"],
        metrics["round_seconds"],
    )  # fmt: skip


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
    tracker.log_datasets(run_id, cfg)
    load = LoadMeter().start()  # how much of the machine others held meanwhile
    system = SystemMetrics(run_id, tracker.client.tracking_uri)
    ctx = LevelContext(level, cfg, tracker, run_id, baseline, entered)
    try:
        with ctx.meter:
            summary = body(ctx)
        machine = load.metrics()
        summary.machine_other_cores = machine["machine_other_cores"]
        tracker.log_metrics(run_id, machine, step=cfg.rounds)
        system.stop()
        return _finish(ctx, summary).to_dict()
    except BaseException as error:
        system.stop()
        tracker.finish(run_id, status=status_after(error))
        raise
