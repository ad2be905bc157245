"""A committee member lost after the clients shared: the round finishes over the
survivors, and a coordinator that only pretended the loss cannot open both sums."""

from __future__ import annotations

import pytest

from fl.weighted_sum import weighted_average
from mpc.protocols.he_aggregation.coordinator import he_average
from mpc.protocols.release import Release
from mpc.protocols.secure_aggregation.coordinator import SecureInput, secure_average
from tests.mpc.secure_inputs import model_states, secure_inputs
from workers.codec import Value
from workers.errors import RemoteError, WorkerError
from workers.virtual import VirtualWorker


class Unreachable(VirtualWorker):
    """A worker the coordinator reports lost when it reaches ``step`` (it is not)."""

    def __init__(self, worker_id: str, *, step: str) -> None:
        super().__init__(worker_id)
        self.step: str | None = step

    def party_op(self, op: str, **args: Value) -> dict[str, Value]:
        if op == self.step:
            raise WorkerError(f"connection to {self.id!r} lost")
        return super().party_op(op, **args)


def test_a_member_lost_after_sharing_leaves_a_round_over_the_survivors() -> None:
    # Prepare: four clients; w2, on the committee, is "lost" once the shares are out.
    workers = [VirtualWorker("w0"), VirtualWorker("w1"), Unreachable("w2", step="secagg.accept")]
    workers.append(VirtualWorker("w3"))
    states, weights = model_states(4), [10, 20, 30, 40]
    inputs = secure_inputs(workers, states, weights)
    releases: dict[str, Release] = {}
    with pytest.raises(WorkerError, match="lost"):
        secure_average(inputs, workers[:3], states[0], min_cohort=3, releases=releases)
    first = next(iter(releases.values())).session

    # Execute: the round again over the survivors, with the releases.
    survivors = [inputs[i] for i in (0, 1, 3)]
    result = secure_average(survivors, workers[:2], states[0], min_cohort=3, releases=releases)

    # Assert: the survivors' average, from the states they shared before.
    expected = weighted_average([states[i] for i in (0, 1, 3)], [10, 20, 40])
    for key, value in expected.items():
        assert (result.state[key] - value).abs().max().item() <= 1e-4
    assert set(releases) == {"w0", "w1", "w2", "w3"}

    # ... and the first session cannot be opened: the member that released it
    # refuses to reveal it, whatever the coordinator claims.
    releaser = next(w for w in workers if w.id == releases["w0"].member)
    with pytest.raises(RemoteError, match="abandoned"):
        releaser.party_op(
            "secagg.reveal",
            session=first,
            contributors=["w0", "w1", "w2", "w3"],
            min_cohort=3,
        )


def test_a_release_for_another_session_or_from_a_stranger_is_refused() -> None:
    # Prepare: a session abandoned after sharing, as above.
    workers = [VirtualWorker("w0"), VirtualWorker("w1"), Unreachable("w2", step="secagg.accept")]
    states = model_states(3)
    inputs = secure_inputs(workers, states, [1, 2, 3])
    releases: dict[str, Release] = {}
    with pytest.raises(WorkerError):
        secure_average(inputs, workers, states[0], releases=releases)
    real = releases["w0"]
    workers[2].step = None

    # Execute / Assert: the coordinator forges releases for w0's state.
    forged = {
        "was not shared in session 'no-such-session'": Release(
            "no-such-session", real.member, real.token
        ),
        "'w9' was not on the committee": Release(real.session, "w9", real.token),
        "failed authentication": releases["w1"],  # sealed for w1, not w0
    }
    for refusal, release in forged.items():
        with pytest.raises(RemoteError, match=refusal):
            secure_average(
                [SecureInput(workers[0], inputs[0].state_id, 1), *inputs[1:]],
                workers,
                states[0],
                releases={"w0": release, "w1": releases["w1"], "w2": releases["w2"]},
            )


def test_he_clients_that_encrypted_before_a_loss_encrypt_again_after_a_release() -> None:
    # Prepare: w3 is lost when asked to encrypt, after w0..w2 did.
    workers = [VirtualWorker("w0"), VirtualWorker("w1"), VirtualWorker("w2")]
    workers.append(Unreachable("w3", step="he.encrypt"))
    states, weights = model_states(4), [10, 20, 30, 40]
    inputs = secure_inputs(workers, states, weights)
    releases: dict[str, Release] = {}
    with pytest.raises(WorkerError, match="lost"):
        he_average(inputs, workers[0], states[0], min_cohort=3, releases=releases)

    # Execute: the round again over the survivors, with the key holder's releases.
    result = he_average(inputs[:3], workers[0], states[0], min_cohort=3, releases=releases)

    # Assert
    assert set(releases) == {"w0", "w1", "w2"} and {r.member for r in releases.values()} == {"w0"}
    expected = weighted_average(states[:3], weights[:3])
    for key, value in expected.items():
        assert (result.state[key] - value).abs().max().item() <= 1e-3
