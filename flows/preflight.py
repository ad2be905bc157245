"""Checks a run makes before Prefect starts, on what only the data can tell."""

from __future__ import annotations

from fl.task_data import task_split
from fl.task_fingerprint import task_fingerprint
from flows.config import ExperimentConfig

__all__ = ["preflight"]


def preflight(cfg: ExperimentConfig) -> None:
    """Fail fast, before Prefect starts, on what only the data can tell.

    Sample counts beyond the dataset, or a partition that cannot give every
    worker data (e.g. ``shards:5000``), would otherwise surface deep inside a
    flow run; so would a Dask cluster (``--dask-address``) that cannot train.
    Loading is cached in-process, so the flows reuse this work.
    """
    # The fingerprint now, moments after the task was imported: its code digest is of
    # the files this process runs, even if they are edited during the run.
    task_fingerprint(cfg.learning_task)
    train = task_split(cfg.learning_task, train=True, limit=cfg.train_samples)
    task_split(cfg.learning_task, train=False, limit=cfg.test_samples)
    cfg.partitioning.indices(train.y)
    if cfg.workers_file is not None:
        from workers.fleet import load_fleet_file

        load_fleet_file(cfg.workers_file, cfg.workers)
    if cfg.task_runner == "dask" and cfg.dask_address is not None:
        from flows.dask_check import check_dask_cluster

        check_dask_cluster(cfg)  # reachable, has workers with our data, code and torch
