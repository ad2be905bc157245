"""Prefect tasks: each wraps one step of an experiment and nothing more.

The algorithms live in ``fl`` (training, FedAvg) and ``workers`` (transport);
these tasks only wire them together. Every task uses ``NO_CACHE``: Prefect's
default cache policy hashes the inputs, which for model states and datasets
would cost more than the work itself (and would pickle them).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from fl.aggregation import RoundAggregate
from fl.attacks import flip_labels
from fl.data import Split
from fl.models import get_state, set_state
from fl.task_data import PartitionSource, partition_source, task_split
from fl.task_fingerprint import task_fingerprint
from fl.tasks import Task
from fl.training import EvalResult, TrainResult
from flows.config import ExperimentConfig
from flows.rounds.clients import ClientSettings, ClientSpec, train_config
from flows.rounds.outcome import StateDict
from flows.timing import timed_body
from workers.auth import read_secret, worker_key
from workers.base import Worker
from workers.core import TRAIN_X_ID, TRAIN_Y_ID, WorkerCore
from workers.fleet import Fleet, RemoteWorkerSpec, check_partition, load_fleet_file
from workers.launcher import LocalWorkerPool, WorkerSpec, threads_per_worker
from workers.model_pool import ModelPool
from workers.virtual import VirtualWorker
from workers.ws_client import WebsocketWorker

__all__ = [
    "connect_remote_workers",
    "evaluate_state",
    "finish_round",
    "launch_virtual_workers",
    "launch_worker_processes",
    "load_test_set",
    "load_train_set",
    "partition_train_set",
    "self_loading_worker",
    "train_centralized",
]


@task(name="load-train-set", cache_policy=NO_CACHE)
@timed_body
def load_train_set(cfg: ExperimentConfig) -> Split:
    return task_split(cfg.learning_task, train=True, limit=cfg.train_samples)


@task(name="load-test-set", cache_policy=NO_CACHE)
@timed_body
def load_test_set(cfg: ExperimentConfig) -> Split:
    return task_split(cfg.learning_task, train=False, limit=cfg.test_samples)


@task(name="partition", cache_policy=NO_CACHE)
@timed_body
def partition_train_set(cfg: ExperimentConfig, labels: torch.Tensor) -> list[torch.Tensor]:
    return cfg.partitioning.indices(labels)


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
    settings = ClientSettings.of(cfg)
    source = client_data_source(settings) if train is None or shards is None else None
    for index in range(cfg.workers):
        worker_id = f"worker-{index}"
        if source is not None:
            spec = ClientSpec(index, index in poisoned)
            workers.append(self_loading_worker(settings, spec, models, source))
            continue
        worker = VirtualWorker(worker_id, core=WorkerCore(worker_id, models=models))
        shard = train.subset(shards[index])
        if index in poisoned:  # over the task's classes, read off its training labels
            shard = flip_labels(shard, num_classes=int(train.y.max()) + 1)
        worker.send(shard.x, obj_id=TRAIN_X_ID)
        worker.send(shard.y, obj_id=TRAIN_Y_ID)
        workers.append(worker)
    return workers


def client_data_source(settings: ClientSettings) -> PartitionSource:
    """Where level 3's clients load their partitions from, resolved once for many clients."""
    return partition_source(settings.partitioning, data_dir=settings.data_dir)


def self_loading_worker(
    settings: ClientSettings,
    spec: ClientSpec,
    models: ModelPool,
    source: PartitionSource | None = None,
) -> VirtualWorker:
    """Client ``spec`` as a virtual worker that loads its own partition (level 3);
    ``source`` is :func:`client_data_source` of ``settings`` when the caller has it."""
    worker_id = f"worker-{spec.index}"
    core = WorkerCore.with_partition(
        worker_id,
        settings.partitioning,
        spec.index,
        data_dir=settings.data_dir,
        label_flip=spec.poisoned,
        models=models,
        source=source,
    )
    return VirtualWorker(worker_id, core=core)


@task(name="connect-remote-workers", cache_policy=NO_CACHE)
@timed_body
def connect_remote_workers(cfg: ExperimentConfig) -> Fleet:
    """Level 5: connect (TLS + challenge–response) to independently started workers."""
    assert cfg.workers_file is not None  # checked by ExperimentConfig
    specs, token_file = load_fleet_file(cfg.workers_file, cfg.workers)
    master = read_secret(token_file)
    fingerprint = task_fingerprint(cfg.learning_task)  # each worker's must be the same

    def connector(index: int, spec: RemoteWorkerSpec) -> WebsocketWorker:
        client = WebsocketWorker(
            spec.worker_id,
            spec.url,
            secret=worker_key(master, spec.worker_id),
            cafile=spec.ca,
            client_cert=spec.client_cert,
            timeout=cfg.request_timeout,
        )
        expected = cfg.partitioning.describe(index)
        return check_partition(client, expected, fingerprint)

    connectors = [functools.partial(connector, i, spec) for i, spec in enumerate(specs)]
    return Fleet(connectors, [spec.worker_id for spec in specs], min_live=cfg.min_workers)


@task(name="launch-worker-processes", cache_policy=NO_CACHE)
@timed_body
def launch_worker_processes(cfg: ExperimentConfig) -> LocalWorkerPool:
    """Level 4: one websocket worker process per client on loopback, each loading
    its own partition; returns the started pool (the caller stops it)."""
    threads = threads_per_worker(cfg.workers)
    spec = WorkerSpec(
        partitioning=cfg.partitioning,
        data_dir=cfg.data_dir,
        threads=threads,
        task=cfg.task,
        fingerprint=task_fingerprint(cfg.learning_task),
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
    model: torch.nn.Module,
    train: Split,
    task: Task,
    cfg: ExperimentConfig,
    generator: torch.Generator,
) -> TrainResult:
    """The baseline's round: ``cfg.epochs`` passes of plain PyTorch over all data."""
    return task.run_train(model, train, train_config(cfg), generator)


@task(name="aggregate", cache_policy=NO_CACHE)
@timed_body
def finish_round(aggregate: RoundAggregate) -> StateDict:
    """The next global state: the strategy finishes what the round's batches reported."""
    return aggregate.finish()


@task(name="evaluate", cache_policy=NO_CACHE)
@timed_body
def evaluate_state(model: torch.nn.Module, state: StateDict, test: Split, task: Task) -> EvalResult:
    set_state(model, state)
    return task.run_evaluate(model, test)


def initial_state(cfg: ExperimentConfig) -> tuple[torch.nn.Module, StateDict]:
    """The same seeded initial model for every level, so levels are comparable."""
    model = cfg.learning_task.build(seed=cfg.seed)
    return model, get_state(model)
