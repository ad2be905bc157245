"""Encrypted aggregation inside the round loop (``--aggregation secure|he``, levels 2-5).

The round trains as usual but leaves each trained state sealed on its worker;
this module then runs, over the clients that delivered, either secure
aggregation (``mpc.protocols.secure_aggregation``, with ``--mac`` its SPDZ variant) with
a committee of ``--committee`` of them drawn at random each round, or CKKS
aggregation (``mpc.protocols.he_aggregation``) with a key holder drawn at random, and
hands the opened average, finished by the strategy (DP-FedAvg adds its noise),
to the loop as the round's aggregate.

Workers that fail during the protocol (levels 4 and 5) before anything is
opened are found by pinging, left out, and the protocol is run once more over
the rest: their trained states are still on their workers, so nothing is
retrained. A state is consumed by the session it was shared in; a surviving
committee member abandons that session and releases the clients' states
(``mpc.protocols.release``), which lets them be shared once more. A failure after
the opening is never retried (two sums over different client sets would give
away a client's update), and a protocol
error that is not a lost worker (a refused share, a total weight that does not
add up, a failed MAC check) ends the run without writing a model.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from fl.aggregation import Finished, Strategy
from fl.errors import FedsimError
from flows.config import ExperimentConfig
from flows.rounds.clients import Client
from flows.rounds.outcome import RoundOutcome, StateDict
from flows.timing import timed_body
from mpc.errors import MPCError
from mpc.protocols.he_aggregation.coordinator import he_average
from mpc.protocols.release import Release
from mpc.protocols.secure_aggregation.coordinator import (
    SecureAggregate,
    SecureInput,
    secure_average,
)
from mpc.protocols.secure_aggregation_mac.coordinator import secure_average_mac
from workers.base import Worker
from workers.errors import RemoteError

__all__ = ["choose_committee", "secure_aggregate_round"]

logger = logging.getLogger("fedsim.secure")
_ATTEMPTS = 2
_SYSTEM_RANDOM = secrets.SystemRandom()


def choose_committee(
    ids: Sequence[str], size: int, *, dealer: bool = False
) -> tuple[list[str], str | None]:
    """``size`` of ``ids`` (at least 2, at most all) and, with ``dealer``, one more
    worker outside the committee to deal MAC keys and masks.

    Drawn afresh each round from the operating system's randomness, so no
    worker knows ahead of time whether it will sit on the committee or deal
    (the result does not depend on the choice: the opened sum is the same).
    """
    needed = 3 if dealer else 2
    if len(ids) < needed:
        raise MPCError(
            f"secure aggregation{' with --mac' if dealer else ''} needs >= {needed} clients "
            f"in a round, got {len(ids)}"
        )
    order = _SYSTEM_RANDOM.sample(list(ids), len(ids))
    count = min(size, len(ids) - 1 if dealer else len(ids))
    committee = sorted(order[:count], key=list(ids).index)
    return committee, (order[count] if dealer else None)


def _alive(worker: Worker) -> bool:
    if worker.closed:
        return False
    try:
        worker.ping()
    except FedsimError:
        return False
    return True


def _attempt(
    cfg: ExperimentConfig,
    outcome: RoundOutcome,
    template: StateDict,
    parallel: bool,
    min_cohort: int,
    releases: dict[str, Release],
) -> SecureAggregate:
    # Client-level DP averages clipped updates with weight 1 each (flows.defence);
    # each worker applies the rule to its own sample count.
    weighting = "uniform" if cfg.dp == "client" else "samples"
    inputs = [
        SecureInput(ptr.worker, ptr, 1 if weighting == "uniform" else update.num_samples)
        for ptr, update in zip(outcome.remote_states, outcome.updates, strict=True)
    ]
    by_id = {item.worker.id: item.worker for item in inputs}
    if cfg.aggregation == "he":
        if len(by_id) < 2:
            raise MPCError(
                f"homomorphic aggregation needs >= 2 clients in a round, got {len(by_id)}"
            )
        key_holder = by_id[_SYSTEM_RANDOM.choice(list(by_id))]
        return he_average(
            inputs,
            key_holder,
            template,
            parallel=parallel,
            weighting=weighting,
            min_cohort=min_cohort,
            releases=releases,
        )
    ids, dealer = choose_committee(list(by_id), cfg.committee, dealer=cfg.mac)
    committee = [by_id[i] for i in ids]
    options = {
        "parallel": parallel,
        "weighting": weighting,
        "min_cohort": min_cohort,
        "releases": releases,
    }
    if dealer is not None:
        return secure_average_mac(inputs, committee, by_id[dealer], template, **options)
    return secure_average(inputs, committee, template, **options)


def _protocol_metrics(cfg: ExperimentConfig, result: SecureAggregate) -> dict[str, float]:
    """Per-round MLflow metrics of the aggregation protocol, by step."""
    seconds = result.seconds
    if cfg.aggregation == "he":
        return {
            "he_setup_seconds": seconds.get("keys", 0.0) + seconds.get("context", 0.0),
            "he_encrypt_seconds": seconds.get("encrypt", 0.0),
            "he_aggregate_seconds": seconds.get("aggregate", 0.0),
            "he_decrypt_seconds": seconds.get("decrypt", 0.0),
            "he_seconds": sum(seconds.values()),
            # std of the noise the key holder flooded the released sum with
            "he_flood_sigma": float(result.run.state["flood_sigma"]),
            # per client id: what each client's encrypted update weighs on the wire
            "ciphertext_bytes": float(sum(result.run.state["ciphertext_bytes"].values())),
            "ciphertext_bytes_per_client": float(
                sum(result.run.state["ciphertext_bytes"].values())
                / max(len(result.run.state["ciphertext_bytes"]), 1)
            ),
        }
    return {
        "sharing_seconds": sum(seconds.get(s, 0.0) for s in ("keys", "deal", "share", "input")),
        "relay_seconds": seconds.get("relay", 0.0),
        "opening_seconds": seconds.get("open", 0.0) + seconds.get("check", 0.0),
        "secagg_seconds": sum(seconds.values()),
        "committee_size": float(len(result.run.workers("committee"))),
    }


@task(name="secure-aggregate", cache_policy=NO_CACHE)
@timed_body
def secure_aggregate_round(
    cfg: ExperimentConfig,
    strategy: Strategy,
    clients: Sequence[Client],
    outcome: RoundOutcome,
    template: StateDict,
    round_index: int,
    parallel: bool = False,
) -> RoundOutcome:
    """The round's outcome, its next state the mean opened by secure aggregation as
    the strategy finishes it (DP-FedAvg adds its noise)."""
    index_of = {client.worker.id: client.index for client in clients}
    workers = [ptr.worker for ptr in outcome.remote_states]
    sent0 = sum(w.bytes_sent for w in workers)
    received0 = sum(w.bytes_received for w in workers)
    dropped = list(outcome.dropped)
    # Fixed by the round as sampled: clients lost on the way do not lower it.
    min_cohort = cfg.cohort_floor(len(outcome.updates) + len(dropped))
    # What an abandoned attempt's surviving members released, for the next one.
    releases: dict[str, Release] = {}
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            result = _attempt(cfg, outcome, template, parallel, min_cohort, releases)
            break
        except (MPCError, RemoteError):
            raise  # the protocol itself failed (e.g. the MAC check): never retried or averaged
        except FedsimError as exc:
            lost = [w for w in workers if not _alive(w)]
            if not lost or attempt == _ATTEMPTS:
                raise
            logger.warning(
                "round %d: secure aggregation lost %s: %s",
                round_index,
                ", ".join(w.id for w in lost),
                exc,
            )
            keep = [i for i, ptr in enumerate(outcome.remote_states) if ptr.worker not in lost]
            dropped += [index_of[w.id] for w in lost]
            outcome = dataclasses.replace(
                outcome,
                updates=[outcome.updates[i] for i in keep],
                remote_states=tuple(outcome.remote_states[i] for i in keep),
            )
            workers = [w for w in workers if w not in lost]
    metrics = _protocol_metrics(cfg, result)
    sent = sum(w.bytes_sent for w in workers) - sent0
    received = sum(w.bytes_received for w in workers) - received0
    return dataclasses.replace(
        outcome,
        aggregate=Finished(strategy.finish_mean(template, result.state, len(outcome.updates))),
        remote_states=(),
        bytes_sent=outcome.bytes_sent + sent,
        bytes_received=outcome.bytes_received + received,
        dropped=tuple(sorted(set(dropped))),
        metrics={**outcome.metrics, **metrics},
    )
