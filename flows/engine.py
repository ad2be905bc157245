"""Where a FedAvg round's client training runs: in this process, or on a Dask cluster.

A round's sampled clients are cut into ``--round-tasks`` batches of consecutive
clients, one Prefect task each (``flows.rounds.batches``): Prefect's per-task cost
(docs/scale.md, "Measured") is paid per batch, not per client, so a round of a
thousand clients is still a handful of task runs.

With ``--task-runner local`` (the default) the batches run at once on the level
flow's thread pool in this process, the cores divided among them. With
``--task-runner dask`` the level's flow runs under ``prefect_dask.DaskTaskRunner``
and the batches run in parallel on Dask workers: on an existing cluster when
``--dask-address`` names its scheduler (checked before the run starts:
``flows.dask_check``), otherwise on a ``LocalCluster`` of ``--dask-workers``
processes bound to 127.0.0.1. Each batch
materialises its clients on the Dask worker from their partition descriptors —
the worker reads the dataset from its own dataset location, as level 3's
clients do — so no training data is shipped per task: only the global model
goes out (once per batch, as a fedsim codec frame) and one partial weighted sum
(or the batch's updates, for aggregators that need them) comes back. That is
why the Dask engine runs level 3, whose clients load their own partitions;
levels 1-2 hand data out from this process, and levels 4-5 are their own
processes already.

Identical results: the batching depends only on ``--round-tasks``, never on the
engine, and every batch folds its clients in the same order wherever it runs. A
Dask run therefore equals the in-process run with the same seed bit for bit when
local training uses the same number of torch threads (``--client-threads``; on a
LocalCluster the default is the cores divided among its processes): floating-point
sums split across threads round differently (docs/scale.md, "Same results").

Trust: Dask ships Prefect's task functions to its workers with (cloud)pickle, so a
Dask cluster must be as trusted as this process — it is the coordinator's own
compute, not a federated client. Model data still crosses as codec frames, never
pickled tensors; secure and homomorphic aggregation, whose workers must keep
sealed state between steps, stay on in-process or websocket workers.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fl.errors import ConfigError

if TYPE_CHECKING:
    from flows.config import ExperimentConfig
    from flows.level import Level

__all__ = [
    "MAX_LOCAL_PROCESSES",
    "TASK_RUNNERS",
    "check_engine",
    "dask_client_threads",
    "dask_task_runner",
]

TASK_RUNNERS: tuple[str, ...] = ("local", "dask")
# A level of worker processes starts one per worker on this host: past this many, the
# processes would only fight over the cores (many clients: levels 2-3, or Dask).
MAX_LOCAL_PROCESSES = 64
_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://[^\s/]+$")


def check_engine(cfg: ExperimentConfig, levels: Sequence[Level]) -> None:
    """Raise ConfigError, one line naming the option, for an impossible engine setting."""
    if cfg.task_runner not in TASK_RUNNERS:
        raise ConfigError(
            f"--task-runner {cfg.task_runner!r} is not one of: {', '.join(TASK_RUNNERS)}"
        )
    for option, value in (("round-tasks", cfg.round_tasks), ("dask-workers", cfg.dask_workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{option} must be an integer >= 1, got {value!r}")
    threads = cfg.client_threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):  # fmt: skip
        raise ConfigError(f"--client-threads must be an integer >= 1, got {threads!r}")
    processes = [level for level in levels if level.processes]
    if processes and cfg.workers > MAX_LOCAL_PROCESSES:
        raise ConfigError(
            f"level {processes[0].number} starts one process per worker; {cfg.workers} workers "
            f"is more than {MAX_LOCAL_PROCESSES}: simulate many clients at levels 2-3 (or on Dask)"
        )
    if cfg.task_runner != "dask":
        if cfg.dask_address is not None:
            raise ConfigError("--dask-address needs --task-runner dask")
        return
    if cfg.dask_address is not None and not _ADDRESS.match(cfg.dask_address):
        raise ConfigError(
            f"--dask-address {cfg.dask_address!r} is not a scheduler address like tcp://HOST:8786"
        )
    others = [lv.run_name for lv in levels if not (lv.dask or lv.centralized)]
    if others:
        raise ConfigError(
            f"--task-runner dask trains level 3 on Dask workers (clients load their own "
            f"partitions there); run {', '.join(others)} without it"
        )
    if cfg.aggregation != "plain" or any(lv.aggregation not in (None, "plain") for lv in levels):
        raise ConfigError(
            "--task-runner dask needs --aggregation plain: secure and he keep sealed "
            "state on long-lived workers"
        )


def dask_client_threads(cfg: ExperimentConfig) -> int | None:
    """Torch threads for one Dask worker process's local training (None: torch's default)."""
    if cfg.client_threads is not None:
        return cfg.client_threads
    if cfg.dask_address is None:  # a LocalCluster shares this host's cores
        return max(1, (os.cpu_count() or 1) // cfg.dask_workers)
    return None


def dask_task_runner(cfg: ExperimentConfig, prefect_api_url: str | None) -> Any:
    """The ``DaskTaskRunner`` for ``cfg``: its cluster is created when the flow starts.

    A LocalCluster's workers get ``PREFECT_API_URL`` of this process's Prefect
    API, so that they report their task runs to it rather than each starting a
    temporary server of its own, which takes seconds.
    """
    from prefect_dask import DaskTaskRunner  # Dask is only imported when used

    # Dask logs every connection at INFO; fedsim's own progress is enough.
    for name in ("distributed", "prefect_dask"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if cfg.dask_address is not None:
        return DaskTaskRunner(address=cfg.dask_address)
    env = {"PREFECT_API_URL": prefect_api_url} if prefect_api_url else {}
    cluster_kwargs = {
        "n_workers": cfg.dask_workers,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
        "env": env,
    }
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs)
