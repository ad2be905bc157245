"""The flows of the in-process levels: baseline, sequential, federated, decentralized.

Each runs the shared round loop (``flows.round_loop``) over its own round
function; the websocket levels are ``flows.websocket_levels``.
"""

from __future__ import annotations

from typing import Any

import torch
from prefect import flow

from fl.aggregation import ClientUpdate, Finished
from fl.data import Split
from fl.models import get_state, set_state
from flows.defence import poisoned_indices
from flows.round_loop import LevelContext, LevelSummary, RoundFn, run_level_body, run_rounds
from flows.rounds.batches import (
    prepare_spec_clients,
    train_live_batches,
    train_spec_batches,
    with_round_metrics,
)
from flows.rounds.clients import Client, ClientSettings, ClientSpec
from flows.rounds.outcome import RoundOutcome, StateDict
from flows.rounds.tasks import (
    initial_state,
    launch_virtual_workers,
    load_test_set,
    load_train_set,
    partition_train_set,
    train_centralized,
)
from flows.rounds.training import train_sequential_round
from flows.secure import secure_aggregate_round
from workers.base import Worker

__all__ = ["baseline_flow", "decentralized_flow", "federated_flow", "sequential_flow"]


def _baseline_rounds(ctx: LevelContext, train: Split) -> RoundFn:
    model, _ = initial_state(ctx.cfg)
    task = ctx.cfg.learning_task  # found once, not every round
    generator = torch.Generator().manual_seed(ctx.cfg.seed)

    def round_fn(state: StateDict, round_index: int) -> RoundOutcome:
        set_state(model, state)
        result = ctx.meter.call(train_centralized, model, train, task, ctx.cfg, generator)
        update = ClientUpdate("baseline", get_state(model), result.num_samples, result.mean_loss)
        return RoundOutcome([update], 0, 0, aggregate=Finished(dict(update.state)))

    return round_fn


def _federated_rounds(
    ctx: LevelContext, workers: list[Worker], *, sequential: bool = False
) -> RoundFn:
    """Rounds over in-process virtual workers (levels 1-3), batched into few tasks."""
    sampler = torch.Generator().manual_seed(ctx.cfg.seed)
    by_id = {w.id: Client(index, w) for index, w in enumerate(workers)}
    reference = ClientSettings.of(ctx.cfg, reference=True)  # level 1's chain: no DP

    def round_fn(state: StateDict, round_index: int) -> RoundOutcome:
        chosen = ctx.strategy.sample_clients(list(by_id), ctx.cfg.fraction, sampler)
        sampled = [by_id[client_id] for client_id in chosen]
        ctx.sampled.append([client.index for client in sampled])
        if sequential:
            return ctx.meter.call(train_sequential_round, sampled, state, reference, round_index)
        outcome, stats = train_live_batches(
            ctx.meter, sampled, state, ctx.cfg, round_index, strategy=ctx.strategy,
            folded=_folds(ctx), models=ctx.models,
        )  # fmt: skip
        if ctx.cfg.aggregation in ("secure", "he"):
            outcome = ctx.meter.call(
                secure_aggregate_round, ctx.cfg, ctx.strategy, sampled, outcome, state, round_index
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
        specs = [ClientSpec(index, index in poisoned) for index in chosen]
        outcome, stats = train_spec_batches(
            ctx.meter, specs, state, ctx.cfg, round_index, strategy=ctx.strategy,
            folded=_folds(ctx), on_dask=on_dask,
        )  # fmt: skip
        return with_round_metrics(outcome, stats)

    return round_fn


def _folds(ctx: LevelContext) -> bool:
    """Whether rounds fold updates into the strategy's mean as they arrive (``rounds.batches``)."""
    return ctx.strategy.fold is not None and ctx.cfg.aggregation == "plain"


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
