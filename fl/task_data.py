"""A task's training data as the clients hold it: the partitions, cut once per process.

Every level cuts the task's train split (its first ``--train-samples``) with
the run's partitioner, so a worker that loads its own data
(:func:`load_partition`) holds exactly the tensors a coordinator would send it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from fl.data import Split, forget_loaded_splits
from fl.errors import ConfigError
from fl.partition import Partitioning
from fl.tasks import Task, data_task, forget_task_splits, task_split

__all__ = ["PartitionSource", "forget_loaded_data", "load_partition", "partition_source"]


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
    forget_task_splits()
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
