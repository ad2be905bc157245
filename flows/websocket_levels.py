"""Levels 4 and 5: the round loop of ``flows.round_loop`` over websocket workers.

Level 4 launches one worker process per client on this host; level 5 connects
to workers started independently, by address. Both train in parallel and
tolerate workers that drop out of a round (``workers.fleet``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from prefect import flow

from flows import progress
from flows.round_loop import (
    LevelContext,
    LevelSummary,
    RoundFn,
    run_level_body,
    run_rounds,
)
from flows.rounds.clients import Client, ClientSettings
from flows.rounds.outcome import RoundOutcome, StateDict
from flows.rounds.tasks import connect_remote_workers, launch_worker_processes, load_test_set
from flows.rounds.training import train_federated_round
from flows.secure import secure_aggregate_round
from workers.errors import WorkerError
from workers.fleet import Fleet
from workers.launcher import LocalWorkerPool

__all__ = ["websocket_local_flow", "websocket_remote_flow"]


def _fleet_rounds(ctx: LevelContext, fleet: Fleet) -> RoundFn:
    """Rounds over websocket workers: parallel training, tolerant of dropped workers.

    Sampling is by position, exactly as for the virtual levels, so the same seed
    samples the same clients. Workers that cannot be reached, or fail during
    the round, are dropped for this round only (re-dialled before the next);
    the round fails only when fewer than ``min_workers`` updates arrive.
    """
    sampler = torch.Generator().manual_seed(ctx.cfg.seed)
    positions = [str(index) for index in range(len(fleet))]
    settings = ClientSettings.of(ctx.cfg)

    def round_fn(state: StateDict, round_index: int) -> RoundOutcome:
        chosen = [int(i) for i in ctx.strategy.sample_clients(positions, ctx.cfg.fraction, sampler)]
        reachable, down = fleet.available(chosen)
        live = [Client(index, worker) for index, worker in reachable]
        outcome = ctx.meter.call(train_federated_round, live, state, settings, round_index)
        for index in outcome.dropped:
            fleet.mark_failed(index)
        dropped = tuple(sorted((*down, *outcome.dropped)))
        outcome = dataclasses.replace(outcome, dropped=dropped)
        _check_min_workers(ctx, outcome, round_index)
        if ctx.cfg.aggregation in ("secure", "he"):
            outcome = ctx.meter.call(
                secure_aggregate_round,
                ctx.cfg,
                ctx.strategy,
                live,
                outcome,
                state,
                round_index,
                True,
            )
            for index in set(outcome.dropped) - set(dropped):
                fleet.mark_failed(index)
            _check_min_workers(ctx, outcome, round_index)
        else:
            aggregate = ctx.strategy.start_round(state, folded=False)
            aggregate.take(outcome.updates, None)
            outcome = dataclasses.replace(outcome, aggregate=aggregate)
        # Said only of a round that goes on: one that cannot fails with its own line.
        if outcome.dropped:
            progress.emit_warning(
                f"round {round_index}: {len(outcome.dropped)} of {len(chosen)} workers dropped "
                f"({_positions(outcome.dropped)}); FedAvg over the other {len(outcome.updates)}"
            )
        return outcome

    return round_fn


def _positions(indices: Sequence[int]) -> str:
    return ", ".join(f"#{i}" for i in indices)


def _check_min_workers(ctx: LevelContext, outcome: RoundOutcome, round_index: int) -> None:
    if len(outcome.updates) < ctx.cfg.min_workers:
        raise WorkerError(
            f"round {round_index}: {len(outcome.updates)} workers answered "
            f"({_positions(outcome.dropped)} dropped), fewer than "
            f"--min-workers {ctx.cfg.min_workers}"
        )


def _fleet_body(
    ctx: LevelContext, start: Callable[[], Fleet], stop: Callable[[], None]
) -> LevelSummary:
    test = ctx.meter.call(load_test_set, ctx.cfg)
    try:
        fleet = start()
        setup_bytes = sum(w.bytes_sent + w.bytes_received for w in fleet.clients)
        ctx.defend(fleet.ids)
        return run_rounds(ctx, test, _fleet_rounds(ctx, fleet), setup_bytes)
    finally:
        stop()  # every process / connection, also on failure and Ctrl-C


def _local_processes_body(ctx: LevelContext) -> LevelSummary:
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


def _remote_body(ctx: LevelContext) -> LevelSummary:
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
    return run_level_body("websocket-local", config, parent_run_id, baseline, _local_processes_body)


@flow(name="fedsim-websocket-remote", log_prints=False)
def websocket_remote_flow(
    config: dict[str, Any],
    parent_run_id: str | None = None,
    baseline: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Level 5: independently started TLS workers, each holding its own partition,
    reached by address from a workers file; every connection authenticated."""
    return run_level_body("websocket-remote", config, parent_run_id, baseline, _remote_body)
