"""A FedAvg round over many virtual clients: batched into few tasks, streamed, on any engine.

A round's sampled clients are cut into ``cfg.round_tasks`` batches of consecutive
clients (:func:`client_batches`), one Prefect task each. In process
(:func:`train_local_batches`) the batches train one after another on the level's
virtual workers; on Dask (:func:`train_dask_batches`) each batch is a task on a
Dask worker, which materialises its clients from their partition descriptors
(:func:`train_client_specs`). Both run :func:`flows.tasks.train_federated_round`
over the batch, so a client's work is the same wherever it runs (``flows.engine``).

Streaming: when the strategy is FedAvg's weighted mean (``Strategy.streaming``) and
aggregation is plain, each batch folds its clients' models into one float64
:class:`~fl.aggregation.WeightedSum` and drops them; the round merges the batches'
sums in batch order (:func:`combine`). A round then holds one model per batch in
flight, whatever the number of clients. Other strategies (robust aggregators,
DP, attacks) need every update, and get them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from fl.aggregation import ClientUpdate, WeightedSum
from fl.data import load_partition
from fl.errors import ConfigError
from flows.config import ExperimentConfig
from flows.engine import dask_client_threads
from flows.resources import tree_rss_bytes
from flows.tasks import Client, RoundOutcome, StateDict, train_clients_in_turn
from flows.timing import OrchestrationMeter
from workers.codec import decode_frame, encode_frame
from workers.core import WorkerCore
from workers.errors import ProtocolError
from workers.memory import tune_malloc
from workers.model_pool import ModelPool
from workers.virtual import VirtualWorker

__all__ = [
    "BatchStats",
    "client_batches",
    "combine",
    "prepare_spec_clients",
    "train_client_batch",
    "train_client_specs",
    "train_live_batches",
    "train_spec_batches",
    "with_round_metrics",
]

T = TypeVar("T")
# A client a Dask worker materialises: its index among all clients and whether it
# is a simulated label-flipping attacker.
ClientSpec = tuple[int, bool]
_STATE_TAG = "fedsim.global-state"
_RESULT_TAG = "fedsim.batch-result"
# Modules of the clients materialised in this process (a Dask worker, or this
# one): one pool for every batch it runs, not one model per client.
_PROCESS_MODELS = ModelPool()


@dataclasses.dataclass
class BatchStats:
    """Where a round's batches ran and what they held, for the round's metrics."""

    body_seconds: list[float] = dataclasses.field(default_factory=list)
    # Modules built per process that trained clients (pid → ModelPool.built).
    models_by_process: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def model_copies(self) -> int:
        return sum(self.models_by_process.values())


def with_round_metrics(outcome: RoundOutcome, stats: BatchStats) -> RoundOutcome:
    """``outcome`` with the round's scale metrics for MLflow.

    ``client_compute_seconds`` is the clients' time in their training loops;
    ``model_copies`` the modules built across the processes that trained them
    (bounded by the batches running at once, not by the client count);
    ``memory_mb`` the resident memory of this process tree after the round.
    """
    metrics = {
        "clients_sampled": float(len(outcome.updates) + len(outcome.dropped)),
        "client_compute_seconds": outcome.compute_seconds,
        "model_copies": float(stats.model_copies),
        "task_seconds_max": max(stats.body_seconds, default=0.0),
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


def combine(
    parts: Sequence[RoundOutcome], global_state: Mapping[str, torch.Tensor]
) -> RoundOutcome:
    """One round's outcome from its batches' outcomes, in batch order.

    Streamed batches' sums are merged and averaged here: the result goes out as
    ``global_state``, the slot through which a round hands back a model it
    aggregated itself (as secure aggregation does).
    """
    streamed = [p.partial for p in parts if p.partial is not None]
    average = None
    if streamed:
        if len(streamed) != len(parts):
            raise ConfigError("a round cannot mix streamed and unstreamed batches")
        total = WeightedSum()
        for partial in streamed:
            total.merge(partial)
        average = total.average({key: t.dtype for key, t in global_state.items()})
    return RoundOutcome(
        [u for p in parts for u in p.updates],
        sum(p.bytes_sent for p in parts),
        sum(p.bytes_received for p in parts),
        dropped=tuple(i for p in parts for i in p.dropped),
        comm_seconds=sum(p.comm_seconds for p in parts),
        compute_seconds=sum(p.compute_seconds for p in parts),
        remote_states=tuple(s for p in parts for s in p.remote_states),
        global_state=average,
    )


def train_live_batches(
    meter: OrchestrationMeter,
    clients: Sequence[Client],
    state: StateDict,
    cfg: ExperimentConfig,
    round_index: int,
    *,
    stream: bool,
    models: ModelPool,
) -> tuple[RoundOutcome, BatchStats]:
    """The round's batches over this process's virtual workers (levels 2-3), as tasks
    on the flow's thread-pool task runner: they train at once, sharing the cores."""
    batches = client_batches(clients, cfg.round_tasks)
    threads = cfg.client_threads or _threads_per_batch(len(batches))
    with _torch_threads(threads):
        start = time.perf_counter()
        futures = [
            train_client_batch.submit(batch, state, cfg, round_index, stream, threads)
            for batch in batches
        ]
        results = [future.result() for future in futures]
        wall = time.perf_counter() - start
    stats = BatchStats(body_seconds=[body for _, body in results])
    stats.models_by_process[os.getpid()] = models.built
    _account(meter, wall, stats, len(futures))
    return combine([outcome for outcome, _ in results], state), stats


def train_spec_batches(
    meter: OrchestrationMeter,
    specs: Sequence[ClientSpec],
    state: StateDict,
    cfg: ExperimentConfig,
    round_index: int,
    *,
    stream: bool,
    on_dask: bool,
) -> tuple[RoundOutcome, BatchStats]:
    """Level 3's batches, each materialising its clients where it runs: in this
    process's task threads, or on the Dask workers of the flow's DaskTaskRunner.

    The global state is encoded once and each batch's result decoded here: model
    data crosses to and from Dask as codec frames, not pickled tensors.
    """
    frame = encode_frame(_STATE_TAG, dict(state))
    config = cfg.to_dict()
    batches = client_batches(specs, cfg.round_tasks)
    if on_dask:
        threads = dask_client_threads(cfg)
    else:
        threads = cfg.client_threads or _threads_per_batch(len(batches))
    with _torch_threads(None if on_dask else threads):
        start = time.perf_counter()
        futures = [
            train_client_specs.submit(batch, frame, config, round_index, stream, threads)
            for batch in batches
        ]
        results = [_decode_result(future.result()) for future in futures]
        wall = time.perf_counter() - start
    stats = BatchStats()
    for _, body, pid, built in results:
        stats.body_seconds.append(body)
        stats.models_by_process[pid] = max(stats.models_by_process.get(pid, 0), built)
    _account(meter, wall, stats, len(futures))
    return combine([outcome for outcome, *_ in results], state), stats


def _threads_per_batch(batches: int) -> int:
    """Torch threads per concurrent batch so that the batches share the cores."""
    return max(1, (os.cpu_count() or 1) // max(batches, 1))


def _account(meter: OrchestrationMeter, wall: float, stats: BatchStats, tasks: int) -> None:
    """Prefect's share of a round of parallel tasks: its wall time beyond the longest
    batch (the least the round could take with the batches side by side)."""
    meter.call_seconds += wall
    meter.body_seconds += min(wall, max(stats.body_seconds, default=0.0))
    meter.calls += tasks


@task(name="train-client-batch", cache_policy=NO_CACHE)
def train_client_batch(
    clients: list[Client],
    state: StateDict,
    cfg: ExperimentConfig,
    round_index: int,
    stream: bool,
    threads: int,
) -> tuple[RoundOutcome, float]:
    """One batch of this process's virtual workers, in turn; with its body's seconds."""
    start = time.perf_counter()
    _set_thread_count(threads)
    outcome = train_clients_in_turn(clients, state, cfg, round_index, stream)
    return outcome, time.perf_counter() - start


def prepare_clients_body(config: dict[str, Any]) -> int:
    """Read the dataset and every client's partition indices into this process's caches."""
    tune_malloc()
    cfg = ExperimentConfig.from_dict(config)
    load_partition(
        cfg.dataset,
        data_dir=cfg.data_dir,
        partition=cfg.partition,
        num_partitions=cfg.workers,
        index=0,
        seed=cfg.seed,
        limit=cfg.train_samples,
    )
    return os.getpid()


prepare_clients = task(name="prepare-clients", cache_policy=NO_CACHE)(prepare_clients_body)


def prepare_spec_clients(meter: OrchestrationMeter, cfg: ExperimentConfig) -> set[int]:
    """Level 3's set-up when no client is resident: each process that will train
    clients (this one, or each Dask worker: one task per batch) loads the data
    before round 1, as launching resident workers does, so rounds time rounds.
    Returns the processes that did."""
    count = cfg.round_tasks if cfg.task_runner == "dask" else 1
    start = time.perf_counter()
    futures = [prepare_clients.submit(cfg.to_dict()) for _ in range(count)]
    pids = {future.result() for future in futures}
    wall = time.perf_counter() - start
    _account(meter, wall, BatchStats(body_seconds=[wall]), count)
    return pids


def train_client_specs_body(
    specs: list[ClientSpec],
    state_frame: bytes,
    config: dict[str, Any],
    round_index: int,
    stream: bool,
    threads: int | None,
) -> bytes:
    """A batch of level-3 clients wherever it runs: materialise, train, fold, encode.

    Each client loads its partition from the dataset location this process sees
    (cached per process), exactly as level 3's workers do; the clients are dropped
    after the batch and only the pooled modules stay.
    """
    start = time.perf_counter()
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536: every freed
    # model-sized block would go back to the kernel and fault in again (measured:
    # local training 1.7x slower). Keep them in the heap, as fedsim's CLI does.
    tune_malloc()
    cfg = ExperimentConfig.from_dict(config)
    tag, state = decode_frame(state_frame)
    if tag != _STATE_TAG or not isinstance(state, dict):
        raise ProtocolError(f"expected a {_STATE_TAG} frame, got {tag!r}")
    clients: list[Client] = []
    for index, poisoned in specs:
        worker_id = f"worker-{index}"
        core = WorkerCore.with_partition(
            worker_id,
            dataset=cfg.dataset,
            data_dir=cfg.data_dir,
            partition=cfg.partition,
            num_partitions=cfg.workers,
            index=index,
            seed=cfg.seed,
            limit=cfg.train_samples,
            label_flip=poisoned,
            models=_PROCESS_MODELS,
        )
        clients.append((index, VirtualWorker(worker_id, core=core)))
    if threads is not None:
        _set_thread_count(threads)
    outcome = train_clients_in_turn(clients, state, cfg, round_index, stream)
    body = time.perf_counter() - start
    return _encode_result(outcome, body, os.getpid(), _PROCESS_MODELS.built)


# Dask pickles the task's function by reference (module + name), so the task
# object must not shadow the function's own name.
train_client_specs = task(name="train-client-specs", cache_policy=NO_CACHE)(train_client_specs_body)


def _encode_result(outcome: RoundOutcome, body: float, pid: int, built: int) -> bytes:
    partial = outcome.partial
    value = {
        "updates": [
            {
                "client_id": u.client_id,
                "state": dict(u.state),
                "num_samples": u.num_samples,
                "train_loss": u.train_loss,
            }
            for u in outcome.updates
        ],
        "partial": None
        if partial is None
        else {"sums": partial.sums, "total": partial.total, "count": partial.count},
        "bytes": [outcome.bytes_sent, outcome.bytes_received],
        "seconds": [outcome.comm_seconds, outcome.compute_seconds, body],
        "process": [pid, built],
    }
    return encode_frame(_RESULT_TAG, value)


def _decode_result(frame: bytes) -> tuple[RoundOutcome, float, int, int]:
    """A batch result back from Dask; ProtocolError if it is not one."""
    tag, value = decode_frame(frame)
    if tag != _RESULT_TAG or not isinstance(value, dict):
        raise ProtocolError(f"expected a {_RESULT_TAG} frame, got {tag!r}")
    try:
        updates = [
            ClientUpdate(u["client_id"], u["state"], int(u["num_samples"]), float(u["train_loss"]))
            for u in value["updates"]
        ]
        partial = None
        if value["partial"] is not None:
            partial = WeightedSum()
            partial.sums = dict(value["partial"]["sums"])
            partial.total = float(value["partial"]["total"])
            partial.count = int(value["partial"]["count"])
        sent, received = value["bytes"]
        comm, compute, body = value["seconds"]
        pid, built = value["process"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed batch result: {type(exc).__name__}: {exc}") from None
    outcome = RoundOutcome(
        updates,
        int(sent),
        int(received),
        comm_seconds=float(comm),
        compute_seconds=float(compute),
        partial=partial,
    )
    return outcome, float(body), int(pid), int(built)


def _set_thread_count(threads: int) -> None:
    """Torch's intra-op threads for the work of the calling thread.

    OpenMP keeps the count per thread: a task-runner thread created earlier
    keeps the count it started with unless it sets its own, which would make a
    client's float sums depend on which thread trained it. Every concurrent
    batch asks for the same count, so setting it from each is no race.
    """
    torch.set_num_threads(threads)


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
