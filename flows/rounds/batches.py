"""A FedAvg round over many virtual clients: batched into few tasks, folded, on any engine.

A round's sampled clients are cut into ``cfg.round_tasks`` batches of consecutive
clients (:func:`client_batches`), one Prefect task each (``flows.rounds.batch_tasks``),
submitted to the level flow's task runner so that they train at once: Prefect's
thread pool in this process, or Dask workers (``flows.engine``). Level 2 (and
level 3 under secure or he aggregation) trains resident virtual workers
(:func:`train_live_batches`); level 3 with plain aggregation keeps no client at
all between rounds: each batch materialises its clients from their partition
descriptors where it runs (:func:`train_spec_batches`).

Folding: when the strategy's mean can be folded update by update (its
``MeanFold``: FedAvg, and DP-FedAvg with a fixed clip) and aggregation is
plain, each batch folds its clients' models into one float64
:class:`~fl.weighted_sum.WeightedSum` and drops them; the round's aggregate
merges the batches' sums in batch order (:func:`combine`) and the strategy
finishes the mean (DP noise included). A round then holds one model per batch
in flight, whatever the number of clients. Other strategies (robust
aggregators, adaptive clipping, update attacks) need every update, and get them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from fl.aggregation import MeanFold, RoundAggregate, Strategy
from fl.errors import ConfigError
from flows.config import ExperimentConfig
from flows.engine import dask_client_threads
from flows.resources import tree_rss_bytes
from flows.rounds.batch_tasks import (
    STATE_TAG,
    decode_result,
    prepare_clients,
    train_client_batch,
    train_client_specs,
    train_client_specs_local,
)
from flows.rounds.clients import Client, ClientSettings, ClientSpec
from flows.rounds.outcome import RoundOutcome, StateDict
from flows.timing import OrchestrationMeter
from workers.codec import encode_frame_writable
from workers.model_pool import ModelPool

__all__ = [
    "BatchStats",
    "client_batches",
    "combine",
    "prepare_spec_clients",
    "train_live_batches",
    "train_spec_batches",
    "with_round_metrics",
]

T = TypeVar("T")


@dataclasses.dataclass
class BatchStats:
    """Where a round's batches ran and what they held, for the round's metrics."""

    body_seconds: list[float] = dataclasses.field(default_factory=list)
    # Modules of the run's model built per process that trained clients (pid → count).
    models_by_process: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def model_copies(self) -> int:
        return sum(self.models_by_process.values())


def with_round_metrics(outcome: RoundOutcome, stats: BatchStats) -> RoundOutcome:
    """``outcome`` with the round's scale metrics for MLflow.

    ``client_compute_seconds`` is the clients' time in their training loops;
    ``model_copies`` the modules built across the processes that trained them
    (bounded by the batches running at once, not by the client count);
    ``memory_mb`` the resident memory of this process tree after the round;
    ``updates_held`` the client updates kept whole for the strategy (0 when the
    round folded them into its sum).
    """
    metrics = {
        "clients_sampled": float(len(outcome.updates) + len(outcome.dropped)),
        "updates_held": float(sum(1 for update in outcome.updates if update.state)),
        "client_compute_seconds": outcome.compute_seconds,
        "model_copies": float(stats.model_copies),
        "task_seconds_max": max(stats.body_seconds, default=0.0),
        "task_seconds_min": min(stats.body_seconds, default=0.0),
        "memory_mb": tree_rss_bytes() / 2**20,
    }
    return dataclasses.replace(outcome, metrics={**outcome.metrics, **metrics})


def client_batches(items: Sequence[T], count: int) -> list[list[T]]:
    """``items`` cut into ``min(count, len(items))`` consecutive, near-equal batches.

    Depends on nothing but the sampled clients and ``count``, so a round's
    batches — and hence the order its partial sums are merged in — are the same
    on every engine.
    """
    if count < 1:
        raise ConfigError(f"round tasks must be >= 1, got {count}")
    count = min(count, len(items))
    size, extra = divmod(len(items), count) if count else (0, 0)
    batches, start = [], 0
    for position in range(count):
        end = start + size + (1 if position < extra else 0)
        batches.append(list(items[start:end]))
        start = end
    return batches


def combine(parts: Sequence[RoundOutcome], aggregate: RoundAggregate) -> RoundOutcome:
    """One round's outcome from its batches' outcomes: each batch's updates (or the
    sum it folded them into) go to the round's ``aggregate`` in batch order."""
    for part in parts:
        aggregate.take(part.updates, part.partial)
    return RoundOutcome(
        [u for p in parts for u in p.updates],
        sum(p.bytes_sent for p in parts),
        sum(p.bytes_received for p in parts),
        dropped=tuple(i for p in parts for i in p.dropped),
        comm_seconds=sum(p.comm_seconds for p in parts),
        compute_seconds=sum(p.compute_seconds for p in parts),
        remote_states=tuple(s for p in parts for s in p.remote_states),
        aggregate=aggregate,
    )


def train_live_batches(
    meter: OrchestrationMeter,
    clients: Sequence[Client],
    state: StateDict,
    cfg: ExperimentConfig,
    round_index: int,
    *,
    strategy: Strategy,
    folded: bool,
    models: ModelPool,
) -> tuple[RoundOutcome, BatchStats]:
    """The round's batches over this process's virtual workers (levels 2-3), as tasks
    on the flow's thread-pool task runner: they train at once, sharing the cores.
    With ``folded`` each batch folds its updates with the strategy's MeanFold."""
    batches = client_batches(clients, cfg.round_tasks)
    fold = strategy.fold if folded else None
    results, wall, shared = _run_here(
        cfg, train_client_batch, batches, state, ClientSettings.of(cfg), round_index, fold
    )
    stats = BatchStats(body_seconds=[body for _, body in results])
    stats.models_by_process[os.getpid()] = models.built
    _account(meter, wall, stats, len(results))
    parts = [outcome for outcome, _ in results]
    return _combine_here(parts, strategy.start_round(state, folded=folded), shared), stats


def train_spec_batches(
    meter: OrchestrationMeter,
    specs: Sequence[ClientSpec],
    state: StateDict,
    cfg: ExperimentConfig,
    round_index: int,
    *,
    strategy: Strategy,
    folded: bool,
    on_dask: bool,
) -> tuple[RoundOutcome, BatchStats]:
    """Level 3's batches, each materialising its clients where it runs: in this
    process's task threads, or on the Dask workers of the flow's DaskTaskRunner.

    To and from Dask, model data crosses as codec frames, not pickled tensors:
    the global state is encoded once and each batch's result decoded here. In
    this process the batches share the state dict and return their outcomes.
    """
    settings = ClientSettings.of(cfg)
    batches = client_batches(specs, cfg.round_tasks)
    fold = strategy.fold if folded else None
    aggregate = strategy.start_round(state, folded=folded)
    if on_dask:
        return _dask_spec_batches(
            meter, batches, state, settings, round_index, fold, aggregate, cfg
        )
    results, wall, shared = _run_here(
        cfg, train_client_specs_local, batches, state, settings, round_index, fold
    )
    stats = _spec_stats(meter, wall, results)
    return _combine_here([outcome for outcome, *_ in results], aggregate, shared), stats


def _run_here(
    cfg: ExperimentConfig,
    batch_task: Any,
    batches: Sequence[Sequence[Any]],
    state: StateDict,
    *args: Any,
) -> tuple[list[Any], float, StateDict]:
    """Every batch as ``batch_task(batch, state, *args, threads)`` on the flow's
    thread-pool task runner, all at once, with ``cfg``'s torch threads per batch
    (sharing the cores); their results, the wall time, and the state dict they
    shared (the tasks' parameter, which :func:`_combine_here` empties)."""
    threads = cfg.client_threads or _threads_per_batch(len(batches))
    shared = dict(state)
    with _torch_threads(threads):
        start = time.perf_counter()
        futures = [batch_task.submit(batch, shared, *args, threads) for batch in batches]
        results = [future.result() for future in futures]
        return results, time.perf_counter() - start, shared


def _combine_here(
    parts: list[RoundOutcome], aggregate: RoundAggregate, shared: dict[str, torch.Tensor]
) -> RoundOutcome:
    """:func:`combine` of in-process batches, then :func:`_empty_batches`."""
    outcome = combine(parts, aggregate)
    _empty_batches(shared, parts)
    return outcome


def _dask_spec_batches(
    meter: OrchestrationMeter,
    batches: list[list[ClientSpec]],
    state: StateDict,
    settings: ClientSettings,
    round_index: int,
    fold: MeanFold | None,
    aggregate: RoundAggregate,
    cfg: ExperimentConfig,
) -> tuple[RoundOutcome, BatchStats]:
    """:func:`train_spec_batches` on Dask workers, through codec frames."""
    frame = encode_frame_writable(STATE_TAG, dict(state))
    threads = dask_client_threads(cfg)
    start = time.perf_counter()
    futures = [
        train_client_specs.submit(batch, frame, settings, round_index, fold, threads)
        for batch in batches
    ]
    results = []
    for future in futures:
        raw = future.result()
        results.append(decode_result(raw))  # copies out of the frame
        _free_frame(raw)
    wall = time.perf_counter() - start
    _free_frame(frame)
    stats = _spec_stats(meter, wall, results)
    return combine([outcome for outcome, *_ in results], aggregate), stats


def _spec_stats(
    meter: OrchestrationMeter, wall: float, results: Sequence[tuple[RoundOutcome, float, int, int]]
) -> BatchStats:
    """Where the batches ran and what they built, accounted to the meter."""
    stats = BatchStats()
    for _, body, pid, built in results:
        stats.body_seconds.append(body)
        stats.models_by_process[pid] = max(stats.models_by_process.get(pid, 0), built)
    _account(meter, wall, stats, len(results))
    return stats


def _free_frame(frame: bytes | bytearray) -> None:
    """Free a round's frame (a task's parameter or result) once it is used.

    Prefect keeps every task run's parameters and return value in reference
    cycles (its state and result records) that only Python's cyclic collector
    frees, and with the many long-lived objects of a flow process that
    collector's full passes come every several rounds: a round's model-sized
    frames and sums piled up until then (docs/scale.md, "What a client costs").
    Emptying what this flow handed to or got from Prefect frees it at once; the
    records keep empty shells. A frame still viewed elsewhere is left as it is,
    freed with the view.
    """
    if isinstance(frame, bytearray):
        with contextlib.suppress(BufferError):
            frame.clear()


def _empty_batches(shared: dict[str, torch.Tensor], parts: Sequence[RoundOutcome]) -> None:
    """:func:`_free_frame` for in-process batches: their shared state parameter, and
    the update lists they returned, once :func:`combine` has taken them (the
    round's aggregate empties the sums it merged)."""
    shared.clear()
    for part in parts:
        part.updates.clear()


def _threads_per_batch(batches: int) -> int:
    """Torch threads per concurrent batch so that the batches share the cores."""
    return max(1, (os.cpu_count() or 1) // max(batches, 1))


def _account(meter: OrchestrationMeter, wall: float, stats: BatchStats, tasks: int) -> None:
    """Prefect's share of a round of parallel tasks: its wall time beyond the longest
    batch (the least the round could take with the batches side by side)."""
    meter.call_seconds += wall
    meter.body_seconds += min(wall, max(stats.body_seconds, default=0.0))
    meter.calls += tasks


def prepare_spec_clients(meter: OrchestrationMeter, cfg: ExperimentConfig) -> None:
    """Level 3's set-up when no client is resident: each process that will train
    clients (this one, or each Dask worker: one task per batch) loads the data
    before round 1, as launching resident workers does, so rounds time rounds."""
    count = cfg.round_tasks if cfg.task_runner == "dask" else 1
    start = time.perf_counter()
    settings = ClientSettings.of(cfg)
    futures = [prepare_clients.submit(settings) for _ in range(count)]
    for future in futures:
        future.result()
    wall = time.perf_counter() - start
    _account(meter, wall, BatchStats(body_seconds=[wall]), count)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` torch intra-op threads (None: as they are), then restore."""
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
