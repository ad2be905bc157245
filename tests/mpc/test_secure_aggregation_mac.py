"""MAC-checked secure aggregation: equals FedAvg, and a member that alters its share is caught."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from fl.models import build_model, get_state
from fl.weighted_sum import weighted_average
from mpc.errors import MPCError
from mpc.field import P
from mpc.protocols.base import ProtocolAborted
from mpc.protocols.secure_aggregation.coordinator import SecureInput
from mpc.protocols.secure_aggregation_mac.coordinator import secure_average_mac
from mpc.protocols.sessions import seal_for
from tests.mpc.secure_inputs import secure_inputs
from workers.codec import Value
from workers.errors import WorkerError
from workers.party import tensor_from_bytes
from workers.virtual import VirtualWorker


class LyingWorker(VirtualWorker):
    """A committee member that adds ``delta`` to one element of what it reveals."""

    def __init__(self, worker_id: str, *, step: str, delta: int, field: str = "sum_share") -> None:
        super().__init__(worker_id)
        self.step, self.delta, self.field = step, delta, field

    def party_op(self, op: str, **args: Value) -> dict[str, Value]:
        values = super().party_op(op, **args)
        if op == self.step:
            value = values[self.field]
            if isinstance(value, torch.Tensor):
                value = value.clone()
                value[3] = (int(value[3]) + self.delta) % P
            else:
                assert isinstance(value, int)
                value = (value + self.delta) % P
            values = {**values, self.field: value}
        return values


def _run(workers: list[Any], weights: list[int]) -> tuple[Any, dict[str, torch.Tensor]]:
    states = [get_state(build_model("mlp", seed=i)) for i in range(len(workers))]
    inputs = secure_inputs(workers, states, weights)
    result = secure_average_mac(inputs, workers[:-1], workers[-1], states[0])
    return result, weighted_average(states, weights)


def test_mac_secure_average_equals_fedavg() -> None:
    # Prepare: four clients, a committee of three, the fourth deals.
    workers = [VirtualWorker(f"w{i}") for i in range(4)]

    # Execute
    result, expected = _run(workers, [120, 80, 300, 5])

    # Assert
    for key, value in expected.items():
        assert (result.state[key] - value).abs().max().item() <= 1e-4
    assert result.total_weight == 505
    assert {"deal", "input", "relay", "open", "check"} <= set(result.seconds)
    assert all(w.core._party.secret_count() == 0 for w in workers)


@pytest.mark.parametrize("delta", [1, 2**60, P - 1, 123456789123])
def test_altered_sum_share_fails_the_mac_check(delta: int) -> None:
    # Prepare: member w1 shifts one element of its share of the sum.
    workers = [VirtualWorker("w0"), LyingWorker("w1", step="secagg.mac.reveal", delta=delta)]
    workers += [VirtualWorker("w2"), VirtualWorker("w3")]

    # Execute / Assert: the opening is refused, naming the check.
    with pytest.raises(MPCError, match="MAC check failed"):
        _run(workers, [10, 20, 30, 40])


def test_a_member_cannot_fix_the_check_by_shifting_its_sigma() -> None:
    # Prepare: w1 alters its share and also shifts σ by a guess.
    class DoubleLiar(LyingWorker):
        def party_op(self, op: str, **args: Value) -> dict[str, Value]:
            values = super().party_op(op, **args)
            if op == "secagg.mac.check":
                values = {**values, "sigma": (int(values["sigma"]) + 987654321) % P}  # type: ignore[call-overload]
            return values

    workers = [VirtualWorker("w0"), DoubleLiar("w1", step="secagg.mac.reveal", delta=5)]
    workers += [VirtualWorker("w2"), VirtualWorker("w3")]

    # Execute / Assert
    with pytest.raises(MPCError, match="MAC check failed"):
        _run(workers, [10, 20, 30, 40])


def test_dealer_on_the_committee_is_refused() -> None:
    workers = [VirtualWorker(f"w{i}") for i in range(3)]
    state = get_state(build_model("mlp", seed=0))
    inputs = [SecureInput(w, w.send(state), 1) for w in workers]
    with pytest.raises(MPCError, match="may not sit on the committee"):
        secure_average_mac(inputs, workers[:2], workers[0], state)


class SplitKeyClient(VirtualWorker):
    """A client that seals a different one-time key for the second member than for the
    others, so that the members would open different ε (or none) from one box."""

    def party_op(self, op: str, **args: Value) -> dict[str, Value]:
        values = super().party_op(op, **args)
        if op == "secagg.mac.input":
            member, public = args["committee"][1], args["public_keys"][1]  # type: ignore[index]
            other = seal_for(
                self.core._party,
                str(args["session"]),
                member,
                public,
                os.urandom(32),
                label="mac/eps-key",
            )
            sealed = list(values["sealed"])  # type: ignore[call-overload]
            sealed[1] = tensor_from_bytes(other)
            values = {**values, "sealed": sealed}
        return values


def test_a_client_that_seals_members_different_keys_is_named() -> None:
    # Prepare: client w3 (not on the committee) splits its key.
    workers = [VirtualWorker(f"w{i}") for i in range(3)] + [SplitKeyClient("w3")]
    workers.append(VirtualWorker("w4"))

    # Execute / Assert: the member with the other key cannot open w3's box.
    with pytest.raises(WorkerError, match="box from 'w3' failed authentication"):
        _run(workers, [10, 20, 30, 40, 50])


class ForwardingCoordinator(VirtualWorker):
    """The dealer as a cheating coordinator addresses it: asked for masks over every
    client but the last (whose ε the members did add)."""

    def party_op(self, op: str, **args: Value) -> dict[str, Value]:
        if op == "secagg.mac.deal_shares":
            args = {**args, "contributors": list(args["contributors"])[:-1]}  # type: ignore[call-overload]
        return super().party_op(op, **args)


def test_masks_over_other_clients_than_the_members_added_are_refused() -> None:
    # Prepare: w0..w2 sit on the committee, w4 deals.
    workers = [VirtualWorker(f"w{i}") for i in range(4)] + [ForwardingCoordinator("w4")]

    # Execute / Assert: every member refuses the dealer's shares, naming the rule.
    with pytest.raises(WorkerError, match="masks cover other clients"):
        _run(workers, [10, 20, 30, 40, 50])


def test_the_dealer_deals_mask_shares_once_per_session() -> None:
    # Prepare: a dealer that gave three clients their mask seeds.
    dealer, *others = [VirtualWorker(f"w{i}") for i in range(4)]
    public = {w.id: w.party_op("keygen", session="s")["public_key"] for w in (dealer, *others)}
    committee = {"committee": ["w1", "w2"], "public_keys": [public["w1"], public["w2"]]}
    dealer.party_op(
        "secagg.mac.deal",
        session="s",
        clients=["w1", "w2", "w3"],
        client_public_keys=[public[i] for i in ("w1", "w2", "w3")],
        **committee,
    )
    shares = {"session": "s", "length": 5, "lead": 0, **committee}
    dealer.party_op("secagg.mac.deal_shares", contributors=["w1", "w2", "w3"], **shares)

    # Execute / Assert: a second set, which would unmask w3's ε as R − R', is refused.
    with pytest.raises(WorkerError, match="already dealt"):
        dealer.party_op("secagg.mac.deal_shares", contributors=["w1", "w2"], **shares)


class DyingWorker(VirtualWorker):
    """A worker whose connection is lost when it reaches ``step``."""

    def __init__(self, worker_id: str, *, step: str) -> None:
        super().__init__(worker_id)
        self.step = step

    def party_op(self, op: str, **args: Value) -> dict[str, Value]:
        if op == self.step:
            raise WorkerError(f"connection to {self.id!r} lost")
        return super().party_op(op, **args)


@pytest.mark.parametrize(
    ("step", "error"),
    [
        ("secagg.mac.accept", WorkerError),
        ("secagg.mac.accept_shares", WorkerError),
        ("secagg.mac.check", ProtocolAborted),
    ],
)
def test_a_lost_worker_is_retryable_only_before_the_opening(step: str, error: type) -> None:
    # Prepare: member w1 is lost during the relay, or during the check (after the opening).
    workers = [VirtualWorker("w0"), DyingWorker("w1", step=step), VirtualWorker("w2")]
    workers.append(VirtualWorker("w3"))

    # Execute / Assert: before the opening the worker error comes through as is (the
    # round loop may retry without w1); after it the run is aborted for good, because
    # a second sum over fewer clients would reveal the missing client's update.
    with pytest.raises(error):
        _run(workers, [10, 20, 30, 40])
