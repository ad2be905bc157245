"""The tasks that train a batch of clients, in this process or on a Dask worker.

``flows.rounds.batches`` cuts a round into batches and submits these tasks to the
level flow's task runner. :func:`train_client_batch` trains resident virtual
workers (this process only). Level-3 clients are materialised from their
partition descriptors where their batch runs (:func:`train_specs_here`): on a
Dask worker, :func:`train_client_specs` takes the global state and answers with
one codec frame each — the batch's partial FedAvg sum or its updates — so that no
tensor crosses to or from a Dask worker pickled; in this process,
:func:`train_client_specs_local` hands them over as objects, since nothing
crosses a process there. :func:`prepare_clients` reads the data into a process's
caches before round 1.

Dask pickles a task's function by reference (module and name): the task objects
below are built from functions of other names, so that the names resolve to the
functions themselves.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from fl.aggregation import ClientUpdate, MeanFold
from fl.task_data import load_partition
from fl.weighted_sum import WeightedSum
from flows.rounds.clients import Client, ClientSettings, ClientSpec
from flows.rounds.outcome import RoundOutcome, StateDict
from flows.rounds.tasks import client_data_source, self_loading_worker
from flows.rounds.training import train_clients_in_turn
from workers.codec import decode_frame, encode_frame_writable
from workers.errors import ProtocolError
from workers.memory import tune_malloc
from workers.model_pool import ModelPool

__all__ = [
    "PROCESS_MODELS",
    "STATE_TAG",
    "decode_result",
    "prepare_clients",
    "train_client_batch",
    "train_client_specs",
    "train_client_specs_local",
    "train_specs_here",
]

# A level-3 client to materialise: its index among all clients and whether it
# is a simulated label-flipping attacker.
STATE_TAG = "fedsim.global-state"
_RESULT_TAG = "fedsim.batch-result"
# Modules of the clients materialised in this process (a Dask worker, or this
# one): one pool for every batch it runs, not one model per client.
PROCESS_MODELS = ModelPool()


def _batch_run_name(parameters: dict[str, Any]) -> str:
    clients = parameters.get("clients") or []
    indices = [c.index for c in clients]
    span = f"clients {min(indices)}–{max(indices)}" if indices else "no clients"
    return f"round {parameters.get('round_index')} · {span}"


@task(name="train-client-batch", cache_policy=NO_CACHE, task_run_name=_batch_run_name)
def train_client_batch(
    clients: list[Client],
    state: StateDict,
    settings: ClientSettings,
    round_index: int,
    fold: MeanFold | None,
    threads: int,
) -> tuple[RoundOutcome, float]:
    """One batch of this process's virtual workers, in turn; with its body's seconds."""
    start = time.perf_counter()
    _set_thread_count(threads)
    outcome = train_clients_in_turn(clients, state, settings, round_index, fold)
    return outcome, time.perf_counter() - start


def prepare_clients_body(settings: ClientSettings) -> None:
    """Read the dataset and every client's partition indices into this process's caches."""
    tune_malloc()
    load_partition(settings.partitioning, 0, data_dir=settings.data_dir)


prepare_clients = task(name="prepare-clients", cache_policy=NO_CACHE)(prepare_clients_body)


def train_client_specs_body(
    specs: list[ClientSpec],
    state_frame: bytes | bytearray,
    settings: ClientSettings,
    round_index: int,
    fold: MeanFold | None,
    threads: int | None,
) -> bytearray:
    """A batch of level-3 clients on a Dask worker: decode the global state's frame,
    train the batch (:func:`train_specs_here`), and answer with one codec frame."""
    start = time.perf_counter()
    tag, state = decode_frame(state_frame)
    if tag != STATE_TAG or not isinstance(state, dict):
        raise ProtocolError(f"expected a {STATE_TAG} frame, got {tag!r}")
    outcome, _, pid, built = train_specs_here(specs, state, settings, round_index, fold, threads)
    return _encode_result(outcome, time.perf_counter() - start, pid, built)


train_client_specs = task(name="train-client-specs", cache_policy=NO_CACHE)(train_client_specs_body)


def train_specs_here(
    specs: list[ClientSpec],
    state: StateDict,
    settings: ClientSettings,
    round_index: int,
    fold: MeanFold | None,
    threads: int | None,
) -> tuple[RoundOutcome, float, int, int]:
    """A batch of level-3 clients in this process: materialise, train, fold.

    Each client loads its partition from the dataset location this process sees
    (cached per process), exactly as level 3's workers do, when its turn comes,
    and is dropped after it: only the pooled modules stay. Returns the outcome,
    the body's seconds, this process's id and the modules of this run's model its
    pool built.
    """
    start = time.perf_counter()
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536: every freed
    # model-sized block would go back to the kernel and fault in again (see
    # docs/scale.md, "Dask"). Keep them in the heap, as fedsim's CLI does.
    tune_malloc()
    source = client_data_source(settings)
    clients = (
        Client(spec.index, self_loading_worker(settings, spec, PROCESS_MODELS, source))
        for spec in specs
    )
    if threads is not None:
        _set_thread_count(threads)
    outcome = train_clients_in_turn(clients, state, settings, round_index, fold)
    built = PROCESS_MODELS.built_of(settings.model)  # this run's model, not earlier runs'
    return outcome, time.perf_counter() - start, os.getpid(), built


# In this process (the thread-pool task runner) the batch's outcome is returned
# as it is: no process boundary is crossed, so no frame is built or decoded.
train_client_specs_local = task(name="train-client-specs-here", cache_policy=NO_CACHE)(
    train_specs_here
)


def _encode_result(outcome: RoundOutcome, body: float, pid: int, built: int) -> bytearray:
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
    # A bytearray, so that the round can free it once decoded (batches._free_frame).
    return encode_frame_writable(_RESULT_TAG, value)


def decode_result(frame: bytes | bytearray) -> tuple[RoundOutcome, float, int, int]:
    """A batch result back from Dask; ProtocolError if it is not one."""
    tag, value = decode_frame(frame)
    if tag != _RESULT_TAG or not isinstance(value, dict):
        raise ProtocolError(f"expected a {_RESULT_TAG} frame, got {tag!r}")
    try:
        updates = [
            ClientUpdate(
                str(u["client_id"]), _tensors(u["state"]), int(u["num_samples"]),
                float(u["train_loss"]),
            )
            for u in value["updates"]
        ]  # fmt: skip
        partial = None
        if value["partial"] is not None:
            partial = WeightedSum()
            partial.sums = _tensors(value["partial"]["sums"])
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


def _tensors(value: Any) -> dict[str, torch.Tensor]:
    if not isinstance(value, dict) or not all(isinstance(t, torch.Tensor) for t in value.values()):
        raise TypeError("expected a map of tensors")
    return dict(value)


def _set_thread_count(threads: int) -> None:
    """Torch's intra-op threads for the work of the calling thread.

    OpenMP keeps the count per thread: a task-runner thread created earlier
    keeps the count it started with unless it sets its own, which would make a
    client's float sums depend on which thread trained it. Every concurrent
    batch asks for the same count, so setting it from each is no race.
    """
    torch.set_num_threads(threads)
