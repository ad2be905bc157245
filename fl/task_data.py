"""A task's data: its splits, checked and cached, and the partitions the clients hold.

A task's ``data`` is called once per split per process (:func:`task_split`) and
what it gives is checked here, so a task with unusable data is one line naming
it. Every level cuts the train split (its first ``--train-samples``) with the
run's partitioner, so a worker that loads its own data (:func:`load_partition`)
holds exactly the tensors a coordinator would send it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from fl.data import Split, forget_loaded_splits
from fl.errors import ConfigError
from fl.partition import Partitioning
from fl.tasks import Task, TaskError, data_task

__all__ = [
    "PartitionSource",
    "forget_loaded_data",
    "load_partition",
    "partition_source",
    "task_split",
    "whole_split",
]


@functools.lru_cache(maxsize=16)
def whole_split(task: Task, split: str) -> Split:
    """The task's whole ``split`` ("train" or "test"), checked; once per process."""
    with task.blamed(f"data({split!r})"):
        given = task.data(split)
    if isinstance(given, tuple) and len(given) == 2:
        given = Split(*given)
    if not isinstance(given, Split):
        raise TaskError(
            f"task {task.name!r}: data({split!r}) returned {type(given).__name__}, "
            "not a Split or an (x, y) pair"
        )
    x, y = given.x, given.y
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise TaskError(f"task {task.name!r}: data({split!r}) holds no tensors")
    if y.dtype != torch.int64 or y.ndim != 1 or x.ndim < 1 or x.shape[0] != y.shape[0]:
        raise TaskError(
            f"task {task.name!r}: data({split!r}) gave x {tuple(x.shape)} and y "
            f"{tuple(y.shape)} {y.dtype}: y must be int64 labels, one per row of x"
        )
    if len(y) == 0:
        raise TaskError(f"task {task.name!r}: data({split!r}) is empty")
    return Split(x.contiguous(), y.contiguous())


def task_split(task: Task, *, train: bool, limit: int | None = None) -> Split:
    """The task's train or test split, its first ``limit`` samples (cached per process;
    the tensors are shared: callers must not mutate them)."""
    split = "train" if train else "test"
    whole = whole_split(task, split)
    if limit is None:
        return whole
    if limit < 1:
        raise ConfigError(f"sample limit must be >= 1, got {limit}")
    if limit > len(whole):
        raise ConfigError(
            f"sample limit {limit} exceeds the {len(whole)} {split} samples of {task.name}"
        )
    return Split(whole.x[:limit], whole.y[:limit])


@dataclass(frozen=True)
class PartitionSource:
    """The train split and every client's indices, with the data found once.

    Finding the data checks the filesystem (a dozen ``stat`` calls); a batch that
    materialises fifty virtual clients asks once, here, instead of per client.
    """

    split: Split
    parts: tuple[torch.Tensor, ...]

    def part(self, index: int) -> Split:
        """Client ``index``'s samples (copied: the result owns its memory)."""
        if not 0 <= index < len(self.parts):
            raise ConfigError(
                f"partition index {index} out of range for {len(self.parts)} partitions"
            )
        return self.split.subset(self.parts[index])


def partition_source(partitioning: Partitioning, *, data_dir: str | Path | None) -> PartitionSource:
    """Where workers that load their own data take their partitions from."""
    task = data_task(partitioning.dataset, None if data_dir is None else str(data_dir))
    split = task_split(task, train=True, limit=partitioning.limit)
    return PartitionSource(split, _partitions(task, partitioning))


def load_partition(
    partitioning: Partitioning, index: int, *, data_dir: str | Path | None = None
) -> Split:
    """Partition ``index`` of the train split — what a worker that loads its own data calls.

    Gives exactly the tensors a coordinator gets by cutting ``task_split(task,
    train=True, limit=limit)`` with ``partitioning.indices``.
    """
    if not 0 <= index < partitioning.count:
        raise ConfigError(
            f"partition index {index} out of range for {partitioning.count} partitions"
        )
    return partition_source(partitioning, data_dir=data_dir).part(index)


def forget_loaded_data() -> None:
    """Drop this process's cached splits and partitions.

    A worker process keeps only its own partition (a copy, see
    ``PartitionSource.part``); the whole training split it was cut from is
    ~190 MB of float32 for Fashion-MNIST, held by the caches for nothing.
    """
    forget_loaded_splits()
    whole_split.cache_clear()
    _partitions.cache_clear()


@functools.lru_cache(maxsize=4)
def _partitions(task: Task, key: Partitioning) -> tuple[torch.Tensor, ...]:
    """Every client's indices, computed once per process for all of its virtual workers.

    Partitioners split the whole label vector at once, so a thousand workers each
    asking for their own part would otherwise repeat the whole split a thousand
    times. The tuple is shared: callers index it and never mutate the tensors.
    """
    split = task_split(task, train=True, limit=key.limit)
    return tuple(key.indices(split.y))
