"""Batching, merging and the batch-result frame of flows.rounds.batches / batch_tasks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fl.aggregation import ClientUpdate, FedAvg
from fl.errors import ConfigError
from fl.models import build_model, get_state
from fl.robust import Median
from fl.weighted_sum import WeightedSum, weighted_average
from flows.config import ExperimentConfig
from flows.rounds.batch_tasks import _encode_result, decode_result
from flows.rounds.batches import client_batches, combine
from flows.rounds.clients import Client, ClientSettings
from flows.rounds.outcome import RoundOutcome
from flows.rounds.training import train_federated_round
from workers.codec import encode_frame
from workers.core import TRAIN_X_ID, TRAIN_Y_ID
from workers.errors import ProtocolError
from workers.messages import FitReply, decode_message
from workers.virtual import VirtualWorker


@given(st.lists(st.integers(), max_size=60), st.integers(min_value=1, max_value=12))
def test_batches_cover_the_clients_in_order_and_near_equal(items: list[int], count: int) -> None:
    batches = client_batches(items, count)
    assert [x for batch in batches for x in batch] == items
    assert len(batches) == min(count, len(items))
    sizes = [len(b) for b in batches]
    assert not sizes or max(sizes) - min(sizes) <= 1


def test_zero_batches_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="round tasks"):
        client_batches([1, 2], 0)


def states(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [
        {"w": torch.randn(3, 2, generator=g), "b": torch.randn(2, generator=g)} for _ in range(n)
    ]


def streamed(batch: list[dict[str, torch.Tensor]], weights: list[float]) -> RoundOutcome:
    partial = WeightedSum()
    for state, weight in zip(batch, weights, strict=True):
        partial.add(state, weight)
    updates = [ClientUpdate(f"c{i}", {}, int(w), 0.5) for i, w in enumerate(weights)]
    return RoundOutcome(updates, 10, 20, compute_seconds=1.0, partial=partial)


def test_combined_batches_average_like_fedavg() -> None:
    # Prepare: 5 clients in batches of 3 and 2.
    s = states(5)
    weights = [2.0, 3.0, 1.0, 4.0, 5.0]
    parts = [streamed(s[:3], weights[:3]), streamed(s[3:], weights[3:])]

    # Execute
    outcome = combine(parts, FedAvg().start_round(s[0], folded=True))
    assert outcome.aggregate is not None
    average = outcome.aggregate.finish()

    # Assert: FedAvg's mean, in the model's dtypes.
    expected = weighted_average(s, weights)
    for key in expected:
        torch.testing.assert_close(average[key], expected[key], rtol=1e-6, atol=1e-7)
        assert average[key].dtype == s[0][key].dtype
    assert len(outcome.updates) == 5 and outcome.bytes_sent == 20 and outcome.compute_seconds == 2


def test_a_round_takes_batches_only_as_it_aggregates() -> None:
    # Prepare
    s = states(2)

    # Execute / Assert: a held round refuses a folded batch and the reverse; a
    # strategy that needs every update cannot fold.
    with pytest.raises(ConfigError, match="folded its updates"):
        combine([streamed(s, [1.0, 1.0])], FedAvg().start_round(s[0], folded=False))
    with pytest.raises(ConfigError, match="held its updates"):
        combine([RoundOutcome([], 0, 0)], FedAvg().start_round(s[0], folded=True))
    with pytest.raises(ConfigError, match="cannot fold"):
        Median().start_round(s[0], folded=True)


def test_batch_result_frame_round_trips_and_rejects_garbage() -> None:
    # Prepare
    part = streamed(states(2), [1.0, 2.0])
    plain = RoundOutcome([ClientUpdate("c9", states(1)[0], 7, 0.25)], 1, 2)

    # Execute
    back, body, pid, built = decode_result(_encode_result(part, 1.5, 42, 2))
    back_plain, *_ = decode_result(_encode_result(plain, 0.1, 1, 1))

    # Assert: sums bit for bit, metadata, and the unstreamed update's state.
    assert back.partial is not None and part.partial is not None
    assert all(torch.equal(back.partial.sums[k], part.partial.sums[k]) for k in part.partial.sums)
    assert (back.partial.total, back.partial.count) == (3.0, 2)
    assert (body, pid, built) == (1.5, 42, 2)
    assert [u.num_samples for u in back.updates] == [1, 2]
    assert torch.equal(back_plain.updates[0].state["w"], plain.updates[0].state["w"])
    with pytest.raises(ProtocolError, match=r"expected a fedsim\.batch-result"):
        decode_result(encode_frame("other", {}))
    with pytest.raises(ProtocolError, match="malformed batch result"):
        decode_result(encode_frame("fedsim.batch-result", {"updates": [{"state": 3}]}))


class MisshapenFitWorker(VirtualWorker):
    """Answers Fit with a trained state whose ``fc2.bias`` lost an element."""

    def _roundtrip(self, data: bytes) -> bytes | bytearray:
        reply = super()._roundtrip(data)
        msg = decode_message(reply)
        if not isinstance(msg, FitReply):
            return reply
        state = {**msg.state, "fc2.bias": msg.state["fc2.bias"][:-1].clone()}
        return dataclasses.replace(msg, state=state).encode()


def test_a_fit_answered_with_a_misshapen_state_drops_that_client_only() -> None:
    # Prepare: three workers with a few random samples; worker 1 lies.
    cfg = ExperimentConfig(levels="4", model="mlp", workers=3, rounds=1, batch_size=4)
    g = torch.Generator().manual_seed(0)
    clients: list[Client] = []
    for index in range(3):
        kind = MisshapenFitWorker if index == 1 else VirtualWorker
        worker = kind(f"w{index}")
        worker.send(torch.randn(8, 1, 28, 28, generator=g), obj_id=TRAIN_X_ID)
        worker.send(torch.randint(0, 10, (8,), generator=g), obj_id=TRAIN_Y_ID)
        clients.append(Client(index, worker))
    state = get_state(build_model("mlp", seed=0))

    # Execute
    outcome = train_federated_round.fn(clients, state, ClientSettings.of(cfg), 1)

    # Assert: the other two trained and were kept, with the model's layout.
    assert outcome.dropped == (1,)
    assert [u.client_id for u in outcome.updates] == ["w0", "w2"]
    for update in outcome.updates:
        assert {k: t.shape for k, t in update.state.items()} == {
            k: t.shape for k, t in state.items()
        }
