"""A cheating coordinator against secure aggregation (with and without MACs) and HE.

Each attack is the one issue 18 ran against fedsim: the coordinator follows
no protocol, only its interest, and the test asserts on what it recovers of
client 0's trained state (no better than guessing) or that the workers refused
with an error naming the rule it broke.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mpc.errors import MPCError
from mpc.protocols.he_aggregation.coordinator import he_average
from mpc.protocols.secure_aggregation.coordinator import (
    SecureAggregate,
    SecureInput,
    secure_average,
)
from mpc.protocols.secure_aggregation_mac.coordinator import secure_average_mac
from tests.adversary.cheating_coordinator import (
    CONFIG,
    Trained,
    data_holders,
    flat,
    open_sum,
    train_round,
)
from tests.worker_processes import worker_processes
from workers.errors import RemoteError

# The four triples of four clients: with one sum over each, client 0's update is
# (S012 + S013 + S023 − 2·S123) / 3 — a cohort of 3 does not stop it.
TRIPLES = ((0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3))


def _close(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """The fraction of client 0's values the attacker has to within 2^-16."""
    return (estimate - truth).abs().le(2.0**-16).double().mean().item()


def _sum(result: SecureAggregate, template: dict[str, torch.Tensor]) -> torch.Tensor:
    return flat(result.state, template) * result.total_weight


def _aggregate(
    mode: str, clients: list[Trained], template: dict[str, torch.Tensor]
) -> torch.Tensor:
    """One honest-looking session over ``clients``, as the library runs it; Σ n·w."""
    inputs = [SecureInput(c.worker, c.state_id, c.samples) for c in clients]
    workers = [c.worker for c in clients]
    if mode == "he":
        return _sum(he_average(inputs, workers[0], template), template)
    if mode == "mac":
        return _sum(secure_average_mac(inputs, workers[:2], workers[2], template), template)
    return _sum(secure_average(inputs, workers, template), template)


@pytest.mark.parametrize("mode", ["secure", "mac", "he"])
def test_resessioning_the_same_trained_states_is_refused(mode: str) -> None:
    # Prepare: four clients train one round, sealed.
    template, trained = train_round(data_holders(4))
    truth = flat(trained[0].truth, template)

    # Execute: one session over each triple of the same sealed states.
    sums, refusals = [], []
    for triple in TRIPLES:
        try:
            sums.append(_aggregate(mode, [trained[i] for i in triple], template))
        except RemoteError as exc:
            refusals.append(str(exc))
    recovered = None
    if len(sums) == len(TRIPLES):
        recovered = (sums[0] + sums[1] + sums[2] - 2 * sums[3]) / 3 / trained[0].samples

    # Assert: the first session consumed every state it took; each later one is
    # refused by a client naming the session that has its state.
    assert recovered is None or _close(recovered, truth) < 0.01
    assert len(sums) == 1 and len(refusals) == 3
    assert all("already shared in session" in message for message in refusals)


def test_a_weight_of_the_coordinators_choosing_is_ignored() -> None:
    # Prepare
    template, trained = train_round(data_holders(3))
    truth = flat(trained[0].truth, template)

    # Execute: client 0 is asked to weigh 2^31, the others 1, so that the sum
    # divided by 2^31 would be client 0's state.
    opened = open_sum(trained, [t.worker for t in trained], template, weights=[2**31, 1, 1])
    recovered = opened[:-1] / 2**31

    # Assert: each client used its own sample count; the estimate is useless.
    assert opened[-1].item() == sum(t.samples for t in trained)
    assert _close(recovered, truth) < 0.01


def test_a_sum_below_the_workers_minimum_cohort_is_refused() -> None:
    # Prepare: workers serving with the default floor of 3.
    template, trained = train_round(data_holders(3))

    # Execute / Assert: the coordinator claims a cohort of 2 is fine.
    with pytest.raises(RemoteError, match="minimum cohort is 3"):
        open_sum(trained[:2], [t.worker for t in trained], template, min_cohort=2)


def test_clients_made_predictable_by_their_training_are_refused() -> None:
    # Prepare: the coordinator gives clients 1 and 2 a learning rate of 1e-12, so
    # their sealed states are (to 2^-40) the global model it knows.
    frozen = dataclasses.replace(CONFIG, lr=1e-12)
    template, trained = train_round(data_holders(3), [CONFIG, frozen, frozen])
    truth = flat(trained[0].truth, template)

    # Execute: open the sum and subtract the known states.
    recovered = None
    try:
        opened = open_sum(trained, [t.worker for t in trained], template)
        known = sum(t.samples * flat(template, template) for t in trained[1:])
        recovered = (opened[:-1] - known) / trained[0].samples
    except RemoteError as exc:
        refusal = str(exc)

    # Assert: members refuse shares trained differently from the others.
    assert recovered is None or _close(recovered, truth) < 0.01
    assert "trained differently" in refusal


def test_clients_weighted_by_different_rules_are_refused() -> None:
    # Prepare
    template, trained = train_round(data_holders(3))

    # Execute / Assert: client 0 weighs its samples, the others 1 each.
    with pytest.raises(RemoteError, match="weighted or trained differently"):
        open_sum(
            trained,
            [t.worker for t in trained],
            template,
            weightings=["samples", "uniform", "uniform"],
        )


@pytest.mark.e2e
def test_resessioning_over_worker_processes_is_refused() -> None:
    # Prepare: four worker processes with their own data, trained sealed.
    with worker_processes(4) as workers:
        template, trained = train_round(workers)

        # Execute: the same states in two sessions.
        first = _aggregate("secure", [trained[i] for i in TRIPLES[0]], template)

        # Assert: the second session is refused; the workers keep serving.
        with pytest.raises(RemoteError, match="already shared in session"):
            _aggregate("secure", [trained[i] for i in TRIPLES[1]], template)
        assert all(w.ping().worker_id == w.id for w in workers)
    assert torch.isfinite(first).all()


def test_a_consumed_state_cannot_be_pushed_out_of_the_workers_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a worker that remembers 3 consumed states; client 0's is one of them.
    monkeypatch.setattr("workers.contributions._MAX_SPENT", 3)
    template, trained = train_round(data_holders(4))
    _aggregate("secure", trained[:3], template)

    # Execute: the coordinator has it consume three more states (each session
    # fails later, on the other clients' consumed states), hoping the record of
    # client 0's goes, then shares client 0's state again.
    worker = trained[0].worker
    filler = [train_round([worker])[1][0] for _ in range(3)]
    refusals = []
    for extra in filler:
        try:
            open_sum([extra, trained[1], trained[3]], [t.worker for t in trained], template)
        except RemoteError as exc:
            refusals.append(str(exc))

    # Assert: while client 0's consumed state is held, its record stays; sharing
    # more is refused instead, and the state is still refused a second session.
    assert "consumed states are still held" in refusals[-1]
    with pytest.raises(RemoteError, match="already shared in session"):
        _aggregate("secure", [trained[i] for i in (0, 1, 3)], template)


@pytest.mark.parametrize("lie", ["weighting", "training"])
def test_he_clients_weighted_or_trained_unlike_the_key_holder_are_refused(lie: str) -> None:
    # Prepare: client 0 (not the key holder) is to weigh its 16+ samples, the
    # others 1 each — or clients 1 and 2 trained with a learning rate of 1e-12.
    frozen = dataclasses.replace(CONFIG, lr=1e-12)
    configs = [CONFIG, frozen, frozen, CONFIG] if lie == "training" else None
    template, trained = train_round(data_holders(4), configs)
    truth = flat(trained[0].truth, template)
    holder, victim = trained[3], trained[0]
    victim_weight = victim.samples if lie == "weighting" else 1
    inputs = [SecureInput(victim.worker, victim.state_id, victim_weight)]
    inputs += [SecureInput(c.worker, c.state_id, 1) for c in (trained[1], trained[2], holder)]
    real_encrypt = victim.worker.party_op

    def victim_told_samples(op: str, **args: object) -> dict[str, object]:
        if op == "he.encrypt" and lie == "weighting":
            args = {**args, "weighting": "samples"}
        return real_encrypt(op, **args)  # type: ignore[arg-type]

    victim.worker.party_op = victim_told_samples  # type: ignore[method-assign]

    # Execute: the coordinator opens the sum and reads client 0 out of it.
    recovered, refusal = None, ""
    try:
        result = he_average(inputs, holder.worker, template, weighting="uniform")
        total = _sum(result, template)
        if lie == "weighting":
            recovered = total / victim.samples
        else:
            known = flat(template, template) * 3
            recovered = total - known
    except (RemoteError, MPCError) as exc:
        refusal = str(exc)

    # Assert
    assert recovered is None or _close(recovered, truth) < 0.01
    assert "key holder" in refusal
