"""The Prefect tasks of a round's client training: clients in turn, in parallel, or in a chain.

Each trains sampled clients through the worker protocol — send the global model,
``Train`` on the worker's own data, fetch (or, under secure aggregation, seal)
the result — and reports the bytes moved and where the time went. Batching many
clients into these tasks is ``flows.rounds.batches``'s job.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from fl.aggregation import ClientUpdate, Finished, MeanFold
from fl.errors import FedsimError
from fl.weighted_sum import WeightedSum
from flows.rounds.clients import Client, ClientSettings, client_seed
from flows.rounds.outcome import RoundOutcome, StateDict
from flows.timing import timed_body
from workers.base import Broadcast
from workers.errors import ProtocolError, RemoteError, WorkerError
from workers.pointer import Pointer

__all__ = [
    "FOLD_GROUP",
    "ClientResult",
    "train_clients_in_turn",
    "train_federated_round",
    "train_sequential_round",
]

logger = logging.getLogger("fedsim.rounds")
# Streamed updates folded at once (WeightedSum.add_many): the float64 sum is read
# and written once per group instead of once per client, for a few models held.
FOLD_GROUP = 4


def _traffic(clients: Sequence[Client]) -> tuple[int, int]:
    return sum(c.worker.bytes_sent for c in clients), sum(c.worker.bytes_received for c in clients)


@dataclass(frozen=True)
class ClientResult:
    """One client's round as the coordinator saw it."""

    update: ClientUpdate
    comm_seconds: float  # outside the worker's training loop: transfer, (de)coding, waiting
    compute_seconds: float  # inside it
    sealed: Pointer | None  # secure aggregation: the trained state, left on the worker


def _train_client(
    client: Client, global_state: Broadcast, settings: ClientSettings, round_index: int
) -> ClientResult:
    """One client's round: receive the global model, train locally, send the update back.

    Under secure aggregation the trained state stays on the worker: the update
    has no state and the pointer to it is returned instead.
    """
    worker = client.worker
    start = time.perf_counter()
    state_ptr = worker.send_broadcast(global_state)
    config, seed = settings.train, client_seed(settings.seed, round_index, client.index)
    if settings.sealed:
        # The trained state stays sealed on the worker: the update carries none.
        new_ptr, reply = worker.train(settings.model, state_ptr, config, seed=seed, sealed=True)
        state_ptr.delete()
        update = ClientUpdate(worker.id, {}, reply.num_samples, reply.mean_loss)
        sealed: Pointer | None = new_ptr
    else:
        # Train and fetch in one round trip; the worker trains the broadcast
        # state's own tensors (consumed) instead of a copy.
        fitted = worker.fit(settings.model, state_ptr, config, seed=seed)
        state = _state_of(fitted.state, worker.id, global_state)
        update = ClientUpdate(worker.id, state, fitted.num_samples, fitted.mean_loss)
        reply, sealed = fitted, None
    seconds = max(time.perf_counter() - start - reply.seconds, 0.0)
    return ClientResult(update, seconds, reply.seconds, sealed)


def _state_of(value: dict[str, object], worker_id: str, sent: Broadcast) -> StateDict:
    """A FitReply's state, which must be laid out as the state the worker was sent:
    the same keys, shapes and dtypes (a worker is not trusted to comply)."""
    layout = sent.layout
    if layout is None or set(value) != set(layout):
        raise ProtocolError(f"worker {worker_id!r} answered Fit with other keys than it was sent")
    for key, t in value.items():
        if not isinstance(t, torch.Tensor) or layout[key] != (tuple(t.shape), t.dtype):
            raise ProtocolError(f"worker {worker_id!r} answered Fit with a bad {key!r}")
    return value  # type: ignore[return-value]


def train_clients_in_turn(
    clients: Iterable[Client],
    global_state: StateDict,
    settings: ClientSettings,
    round_index: int,
    fold: MeanFold | None,
) -> RoundOutcome:
    """Clients one after another; with ``fold`` (the strategy's) the updates are
    folded into a WeightedSum as they arrive, :data:`FOLD_GROUP` at a time, and
    dropped: the batch holds a few models, not one per client.

    ``clients`` may be a generator that materialises each client when its turn
    comes: then only one client's data is held at a time.
    """
    partial = WeightedSum() if fold is not None else None
    pending: list[tuple[Mapping[str, torch.Tensor], float]] = []  # updates not folded yet
    updates, sealed, comm, compute, sent, received = [], [], 0.0, 0.0, 0, 0
    broadcast = Broadcast.of(global_state)  # encoded once for the batch
    for client in clients:
        sent0, received0 = _traffic([client])
        try:
            result = _train_client(client, broadcast, settings, round_index)
        except RemoteError as exc:
            # A simulated client fails the same way whenever it is run: the level stops,
            # its line naming the round and client (the task's failure names the task).
            raise WorkerError(f"round {round_index}, {client.worker.id}: {exc}") from None
        sent1, received1 = _traffic([client])
        sent, received = sent + sent1 - sent0, received + received1 - received0
        update = result.update
        if partial is not None:
            assert fold is not None
            pending.append(fold.weighed(update, global_state))
            if len(pending) == FOLD_GROUP:
                partial.add_many(pending)
                pending.clear()
            update = dataclasses.replace(update, state={})
        updates.append(update)
        comm += result.comm_seconds
        compute += result.compute_seconds
        if result.sealed is not None:
            sealed.append(result.sealed)
    if partial is not None:
        partial.add_many(pending)
    return RoundOutcome(
        updates,
        sent,
        received,
        comm_seconds=comm,
        compute_seconds=compute,
        partial=partial,
        remote_states=tuple(sealed),
    )


@task(name="train-round", cache_policy=NO_CACHE, task_run_name="round {round_index}")
@timed_body
def train_federated_round(
    clients: Sequence[Client],
    global_state: StateDict,
    settings: ClientSettings,
    round_index: int,
) -> RoundOutcome:
    """Send the global model to each sampled worker process, train there, fetch the update.

    Every client trains at once (levels 4-5): one thread per client waits on its
    socket while the processes compute. Updates are returned in client order, so
    aggregation is deterministic. (Virtual workers train in batches, in turn:
    :func:`train_clients_in_turn`.)
    """
    sent0, received0 = _traffic(clients)
    broadcast = Broadcast.of(global_state)
    pool = ThreadPoolExecutor(max_workers=max(len(clients), 1))
    try:
        futures = [
            pool.submit(_train_client, client, broadcast, settings, round_index)
            for client in clients
        ]
        wait(futures)
    finally:
        # On Ctrl-C, return at once: stopping the workers unblocks the threads.
        pool.shutdown(wait=False, cancel_futures=True)
    results, dropped = [], []
    for client, future in zip(clients, futures, strict=True):
        error = future.exception()
        if isinstance(error, FedsimError):
            # A worker that died, stalled past the timeout, garbled its reply or
            # failed to train is left out of this round; the others go on.
            logger.warning("round %d: dropped %s: %s", round_index, client.worker.id, error)
            dropped.append(client.index)
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


@task(name="train-sequential-round", cache_policy=NO_CACHE, task_run_name="round {round_index}")
@timed_body
def train_sequential_round(
    clients: Sequence[Client],
    global_state: StateDict,
    settings: ClientSettings,
    round_index: int,
) -> RoundOutcome:
    """Level 1: the model moves worker to worker and trains on each in turn."""
    sent0, received0 = _traffic(clients)
    pointer = clients[0].worker.send(global_state)
    losses, samples = [], []
    for position, client in enumerate(clients):
        worker = client.worker
        if position > 0:
            pointer = pointer.move(worker)
        seed = client_seed(settings.seed, round_index, client.index)
        new_ptr, reply = worker.train(settings.model, pointer, settings.train, seed=seed)
        pointer.delete()
        pointer = new_ptr
        losses.append(reply.mean_loss * reply.num_samples)
        samples.append(reply.num_samples)
    state = pointer.get()
    update = ClientUpdate("sequential", state, sum(samples), sum(losses) / max(sum(samples), 1))
    sent1, received1 = _traffic(clients)
    return RoundOutcome(
        [update], sent1 - sent0, received1 - received0, aggregate=Finished(dict(state))
    )
