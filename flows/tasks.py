"""Prefect tasks: each wraps one step of an experiment and nothing more.

The algorithms live in ``fl`` (training, FedAvg) and ``workers`` (transport);
these tasks only wire them together. Every task uses ``NO_CACHE``: Prefect's
default cache policy hashes the inputs, which for model states and datasets
would cost more than the work itself (and would pickle them).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from fl.aggregation import ClientUpdate, Strategy, WeightedSum
from fl.attacks import flip_labels
from fl.data import Split, load_split
from fl.errors import FedsimError
from fl.models import build_model, get_state, set_state
from fl.partition import parse_partition, partition_indices
from fl.training import EvalResult, TrainConfig, TrainResult, evaluate, train_local
from flows.config import ExperimentConfig
from flows.timing import timed_body
from workers.auth import read_secret
from workers.base import Broadcast, Worker
from workers.core import TRAIN_X_ID, TRAIN_Y_ID, WorkerCore, partition_descriptor
from workers.fleet import Fleet, RemoteWorkerSpec, check_partition, load_fleet_file
from workers.launcher import LocalWorkerPool, WorkerSpec, threads_per_worker
from workers.model_pool import ModelPool
from workers.pointer import Pointer
from workers.virtual import VirtualWorker
from workers.ws_client import WebsocketWorker

__all__ = [
    "RoundOutcome",
    "aggregate_updates",
    "client_seed",
    "connect_remote_workers",
    "evaluate_state",
    "launch_virtual_workers",
    "launch_worker_processes",
    "load_test_set",
    "load_train_set",
    "partition_train_set",
    "train_centralized",
    "train_federated_round",
    "train_sequential_round",
]

logger = logging.getLogger("fedsim.rounds")
StateDict = dict[str, torch.Tensor]
# A sampled client: its index among all workers (which seeds its training) and its worker.
Client = tuple[int, Worker]


def client_seed(seed: int, round_index: int, client_index: int) -> int:
    """Independent, reproducible seed for one client's local training in one round."""
    sequence = np.random.SeedSequence([seed, round_index, client_index])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def train_config(cfg: ExperimentConfig) -> TrainConfig:
    """Local SGD settings of the baseline and level 1 (the clean references)."""
    return TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr)


def client_train_config(cfg: ExperimentConfig) -> TrainConfig:
    """A FedAvg client's settings: plus its side of DP (flows.defence).

    Client-level DP clips the update on the worker (with a fixed clip; an
    adaptive one lives on the coordinator); sample-level DP trains with DP-SGD.
    """
    fixed_clip = cfg.dp == "client" and cfg.dp_adaptive_quantile is None
    return dataclasses.replace(
        train_config(cfg),
        update_clip=cfg.dp_clip if fixed_clip else 0.0,
        dp_clip=cfg.dp_clip if cfg.dp == "sample" else 0.0,
        dp_noise=cfg.dp_noise if cfg.dp == "sample" else 0.0,
    )


@dataclass(frozen=True)
class RoundOutcome:
    """What one round of local training returns to the coordinator."""

    updates: list[ClientUpdate]
    bytes_sent: int
    bytes_received: int
    # True when the round itself produced the next global model (baseline,
    # sequential): there is nothing for the strategy to aggregate.
    aggregated: bool = False
    # Clients that were sampled but did not deliver an update (websocket levels).
    dropped: tuple[int, ...] = ()
    comm_seconds: float = 0.0
    # Seconds the clients spent in their local training loops (summed).
    compute_seconds: float = 0.0
    # Streamed FedAvg: the updates were folded into this sum as they arrived and
    # carry no state (``flows.client_rounds``).
    partial: WeightedSum | None = None
    # Secure aggregation: the trained states stay on the workers (one pointer per
    # update, same order) until the protocol opens their sum as ``global_state``.
    remote_states: tuple[Pointer, ...] = ()
    global_state: StateDict | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@task(name="load-train-set", cache_policy=NO_CACHE)
@timed_body
def load_train_set(cfg: ExperimentConfig) -> Split:
    return load_split(cfg.dataset, train=True, data_dir=cfg.data_dir, limit=cfg.train_samples)


@task(name="load-test-set", cache_policy=NO_CACHE)
@timed_body
def load_test_set(cfg: ExperimentConfig) -> Split:
    return load_split(cfg.dataset, train=False, data_dir=cfg.data_dir, limit=cfg.test_samples)


@task(name="partition", cache_policy=NO_CACHE)
@timed_body
def partition_train_set(cfg: ExperimentConfig, labels: torch.Tensor) -> list[torch.Tensor]:
    spec = parse_partition(cfg.partition)
    return partition_indices(spec, labels, cfg.workers, cfg.seed)


@task(name="launch-workers", cache_policy=NO_CACHE)
@timed_body
def launch_virtual_workers(
    cfg: ExperimentConfig,
    *,
    train: Split | None,
    shards: Sequence[torch.Tensor] | None,
    poisoned: frozenset[int] = frozenset(),
    models: ModelPool | None = None,
) -> list[Worker]:
    """Start ``cfg.workers`` virtual workers and give each its training data.

    With ``train`` and ``shards`` the coordinator sends each worker its shard
    (levels 1 and 2); without, each worker loads its own partition and the
    training data never passes through the coordinator (level 3). Workers in
    ``poisoned`` are simulated data attackers: they train on flipped labels.
    All workers borrow their modules from ``models`` (one pool for the run), so
    the process holds no model per client.
    """
    models = models if models is not None else ModelPool()
    workers: list[Worker] = []
    for index in range(cfg.workers):
        worker_id = f"worker-{index}"
        if train is None or shards is None:
            core = WorkerCore.with_partition(
                worker_id,
                dataset=cfg.dataset,
                data_dir=cfg.data_dir,
                partition=cfg.partition,
                num_partitions=cfg.workers,
                index=index,
                seed=cfg.seed,
                limit=cfg.train_samples,
                label_flip=index in poisoned,
                models=models,
            )
            workers.append(VirtualWorker(worker_id, core=core))
            continue
        worker = VirtualWorker(worker_id, core=WorkerCore(worker_id, models=models))
        shard = train.subset(shards[index])
        if index in poisoned:
            shard = flip_labels(shard)
        worker.send(shard.x, obj_id=TRAIN_X_ID)
        worker.send(shard.y, obj_id=TRAIN_Y_ID)
        workers.append(worker)
    return workers


@task(name="connect-remote-workers", cache_policy=NO_CACHE)
@timed_body
def connect_remote_workers(cfg: ExperimentConfig) -> Fleet:
    """Level 5: connect (TLS + challenge–response) to independently started workers."""
    assert cfg.workers_file is not None  # checked by ExperimentConfig
    specs, token_file = load_fleet_file(cfg.workers_file, cfg.workers)
    secret = read_secret(token_file)

    def connector(index: int, spec: RemoteWorkerSpec) -> WebsocketWorker:
        client = WebsocketWorker(
            spec.worker_id,
            spec.url,
            secret=secret,
            cafile=spec.ca,
            timeout=cfg.request_timeout,
            connect_timeout=5,
        )
        expected = partition_descriptor(
            cfg.dataset, cfg.partition, index, cfg.workers, cfg.seed, cfg.train_samples
        )
        return check_partition(client, expected)

    connectors = [functools.partial(connector, i, spec) for i, spec in enumerate(specs)]
    return Fleet(connectors, [spec.worker_id for spec in specs], min_live=cfg.min_workers)


@task(name="launch-worker-processes", cache_policy=NO_CACHE)
@timed_body
def launch_worker_processes(cfg: ExperimentConfig) -> LocalWorkerPool:
    """Level 4: one websocket worker process per client on loopback, each loading
    its own partition; returns the started pool (the caller stops it)."""
    spec = WorkerSpec(
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        partitioner=cfg.partition,
        seed=cfg.seed,
        train_samples=cfg.train_samples,
        count=cfg.workers,
        threads=threads_per_worker(cfg.workers),
    )
    pool = LocalWorkerPool(spec, request_timeout=cfg.request_timeout)
    try:
        pool.start()
    except BaseException:
        pool.stop()
        raise
    return pool


@task(name="train-centralized", cache_policy=NO_CACHE)
@timed_body
def train_centralized(
    model: torch.nn.Module, train: Split, cfg: ExperimentConfig, generator: torch.Generator
) -> TrainResult:
    """The baseline's round: ``cfg.epochs`` passes of plain PyTorch over all data."""
    return train_local(model, train, train_config(cfg), generator)


def _traffic(clients: Sequence[Client]) -> tuple[int, int]:
    return sum(w.bytes_sent for _, w in clients), sum(w.bytes_received for _, w in clients)


@dataclass(frozen=True)
class ClientResult:
    """One client's round as the coordinator saw it."""

    update: ClientUpdate
    comm_seconds: float  # outside the worker's training loop: transfer, (de)coding, waiting
    compute_seconds: float  # inside it
    sealed: Pointer | None  # secure aggregation: the trained state, left on the worker


def _train_client(
    client: Client, global_state: Broadcast, cfg: ExperimentConfig, round_index: int
) -> ClientResult:
    """One client's round: receive the global model, train locally, send the update back.

    Under secure aggregation the trained state stays on the worker: the update
    has no state and the pointer to it is returned instead.
    """
    index, worker = client
    start = time.perf_counter()
    secure = cfg.aggregation in ("secure", "he")  # the update stays sealed on the worker
    state_ptr = worker.send_broadcast(global_state)
    new_ptr, reply = worker.train(
        cfg.model,
        state_ptr,
        client_train_config(cfg),
        seed=client_seed(cfg.seed, round_index, index),
        sealed=secure,
    )
    state_ptr.delete()
    state = {} if secure else new_ptr.get()
    update = ClientUpdate(worker.id, state, reply.num_samples, reply.mean_loss)
    seconds = max(time.perf_counter() - start - reply.seconds, 0.0)
    return ClientResult(update, seconds, reply.seconds, new_ptr if secure else None)


def train_clients_in_turn(
    clients: Iterable[Client],
    global_state: StateDict,
    cfg: ExperimentConfig,
    round_index: int,
    stream: bool,
) -> RoundOutcome:
    """Clients one after another; with ``stream`` each update is folded into a
    WeightedSum as it arrives and dropped, so the round holds one model, not one per client.

    ``clients`` may be a generator that materialises each client when its turn
    comes: then only one client's data is held at a time.
    """
    partial = WeightedSum() if stream else None
    updates, sealed, comm, compute, sent, received = [], [], 0.0, 0.0, 0, 0
    broadcast = Broadcast.of(global_state)  # encoded once for the batch
    for client in clients:
        sent0, received0 = _traffic([client])
        result = _train_client(client, broadcast, cfg, round_index)
        sent1, received1 = _traffic([client])
        sent, received = sent + sent1 - sent0, received + received1 - received0
        update = result.update
        if partial is not None:
            partial.add(update.state, float(update.num_samples))
            update = dataclasses.replace(update, state={})
        updates.append(update)
        comm += result.comm_seconds
        compute += result.compute_seconds
        if result.sealed is not None:
            sealed.append(result.sealed)
    return RoundOutcome(
        updates,
        sent,
        received,
        comm_seconds=comm,
        compute_seconds=compute,
        partial=partial,
        remote_states=tuple(sealed),
    )


@task(name="train-round", cache_policy=NO_CACHE)
@timed_body
def train_federated_round(
    clients: Sequence[Client],
    global_state: StateDict,
    cfg: ExperimentConfig,
    round_index: int,
    parallel: bool = False,
    stream: bool = False,
) -> RoundOutcome:
    """Send the global model to each sampled worker, train there, fetch the update.

    With ``parallel`` (worker processes), every client trains at once: one
    thread per client waits on its socket while the processes compute. Updates
    are returned in client order either way, so aggregation is deterministic.
    ``stream`` (in turn only) folds FedAvg's sum as updates arrive.
    """
    if not parallel:
        return train_clients_in_turn(clients, global_state, cfg, round_index, stream)
    sent0, received0 = _traffic(clients)
    broadcast = Broadcast.of(global_state)
    pool = ThreadPoolExecutor(max_workers=max(len(clients), 1))
    try:
        futures = [
            pool.submit(_train_client, client, broadcast, cfg, round_index) for client in clients
        ]
        wait(futures)
    finally:
        # On Ctrl-C, return at once: stopping the workers unblocks the threads.
        pool.shutdown(wait=False, cancel_futures=True)
    results, dropped = [], []
    for (index, worker), future in zip(clients, futures, strict=True):
        error = future.exception()
        if isinstance(error, FedsimError):
            # A worker that died, stalled past the timeout, garbled its reply or
            # failed to train is left out of this round; the others go on.
            logger.warning("round %d: dropped %s: %s", round_index, worker.id, error)
            dropped.append(index)
        elif error is not None:
            raise error
        else:
            results.append(future.result())
    sent1, received1 = _traffic(clients)
    # In parallel, the round waits for its slowest client: report the largest.
    return RoundOutcome(
        [r.update for r in results],
        sent1 - sent0,
        received1 - received0,
        dropped=tuple(dropped),
        comm_seconds=max((r.comm_seconds for r in results), default=0.0),
        compute_seconds=sum(r.compute_seconds for r in results),
        remote_states=tuple(r.sealed for r in results if r.sealed is not None),
    )


@task(name="train-sequential-round", cache_policy=NO_CACHE)
@timed_body
def train_sequential_round(
    clients: Sequence[Client],
    global_state: StateDict,
    cfg: ExperimentConfig,
    round_index: int,
) -> RoundOutcome:
    """Level 1: the model moves worker to worker and trains on each in turn."""
    sent0, received0 = _traffic(clients)
    config = train_config(cfg)
    pointer = clients[0][1].send(global_state)
    losses, samples = [], []
    for position, (index, worker) in enumerate(clients):
        if position > 0:
            pointer = pointer.move(worker)
        new_ptr, reply = worker.train(
            cfg.model, pointer, config, seed=client_seed(cfg.seed, round_index, index)
        )
        pointer.delete()
        pointer = new_ptr
        losses.append(reply.mean_loss * reply.num_samples)
        samples.append(reply.num_samples)
    state = pointer.get()
    update = ClientUpdate("sequential", state, sum(samples), sum(losses) / max(sum(samples), 1))
    sent1, received1 = _traffic(clients)
    return RoundOutcome([update], sent1 - sent0, received1 - received0, aggregated=True)


@task(name="aggregate", cache_policy=NO_CACHE)
@timed_body
def aggregate_updates(
    strategy: Strategy, global_state: StateDict, updates: Sequence[ClientUpdate]
) -> StateDict:
    return strategy.aggregate(global_state, updates)


@task(name="evaluate", cache_policy=NO_CACHE)
@timed_body
def evaluate_state(model: torch.nn.Module, state: StateDict, test: Split) -> EvalResult:
    set_state(model, state)
    return evaluate(model, test)


def initial_state(cfg: ExperimentConfig) -> tuple[torch.nn.Module, StateDict]:
    """The same seeded initial model for every level, so levels are comparable."""
    model = build_model(cfg.model, seed=cfg.seed)
    return model, get_state(model)
