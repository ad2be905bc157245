"""Plans: traced once into allowlisted ops, validated on arrival, run many times by id."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.workers.conftest import assert_same_value
from workers import messages as m
from workers.errors import RemoteError, WorkerError
from workers.plan import Plan, PlanStep, Slot, trace_plan
from workers.virtual import VirtualWorker


def _affine_relu_sum(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.relu(x @ w + b).sum()


def _classifier(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    logits = F.linear(x.flatten(1), w, b)
    return F.log_softmax(logits, dim=1), logits.argmax(dim=1), 2 - logits * 0.5


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, 4, generator=gen), torch.randn(4, 3, generator=gen), torch.randn(3)


def test_traced_plan_equals_direct_execution() -> None:
    # Prepare
    x, w, b = _inputs(0)
    x4 = x.reshape(6, 2, 2)

    # Execute
    plan = trace_plan(_affine_relu_sum)
    classifier = trace_plan(_classifier)

    # Assert
    assert [step.op for step in plan.steps] == ["matmul", "add", "relu", "sum"]
    assert_same_value(plan.run_local(x, w, b), [_affine_relu_sum(x, w, b)])
    assert_same_value(classifier.run_local(x4, w.t(), b), list(_classifier(x4, w.t(), b)))


def test_plan_is_sent_once_and_run_by_id_many_times() -> None:
    # Prepare
    worker = VirtualWorker("alice")
    plan = trace_plan(_affine_relu_sum)
    remote_plan = worker.send_plan(plan)
    put_after_send = worker.message_counts["send_plan"]

    # Execute
    results = []
    for seed in range(3):
        x, w, b = _inputs(seed)
        (out,) = remote_plan(worker.send(x), worker.send(w), worker.send(b))
        results.append((out.get(), _affine_relu_sum(x, w, b)))

    # Assert
    assert put_after_send == 1
    assert worker.message_counts["send_plan"] == 1
    assert worker.message_counts["run_plan"] == 3
    for remote, local in results:
        assert torch.equal(remote, local)


def test_plan_with_several_outputs_keeps_them_remote() -> None:
    # Prepare
    worker = VirtualWorker("alice")
    x, w, b = _inputs(1)
    args = [worker.send(t) for t in (x.reshape(6, 2, 2), w.t(), b)]
    plan_ptr = worker.send_plan(trace_plan(_classifier))

    # Execute
    outputs = worker.run_plan(plan_ptr.plan_id, *args)

    # Assert
    assert len(outputs) == 3
    assert len(worker.core.object_ids()) == 6
    assert_same_value([o.get() for o in outputs], list(_classifier(*(a.get() for a in args))))


def test_non_allowlisted_call_is_refused_at_trace_time() -> None:
    with pytest.raises(WorkerError, match="sin"):
        trace_plan(lambda x: torch.sin(x) + 1)


def test_data_dependent_control_flow_is_refused_at_trace_time() -> None:
    with pytest.raises(WorkerError, match="control flow"):
        trace_plan(lambda x: x if x.sum() > 0 else -x)


def test_plan_wire_form_round_trips_through_the_codec() -> None:
    # Prepare
    plan = trace_plan(lambda x: torch.cat([x, x * torch.ones(2)], dim=0).mean(0))

    # Execute
    msg = m.decode_message(m.SendPlan("p", plan.to_dict()).encode())
    assert isinstance(msg, m.SendPlan)
    restored = Plan.from_dict(msg.plan)

    # Assert
    x = torch.randn(3, 2)
    assert torch.equal(restored.run_local(x)[0], plan.run_local(x)[0])


@pytest.mark.parametrize(
    "bad_step",
    [
        {"op": "system", "args": [{"const": "rm -rf /"}], "kwargs": {}},
        {"op": "__import__", "args": [{"const": "os"}], "kwargs": {}},
        {"op": "add", "args": [{"slot": 5}, {"const": 1}], "kwargs": {}},  # forward ref
        {"op": "add", "args": [{"code": "x"}], "kwargs": {}},
        {"op": "add", "args": [], "kwargs": {}, "extra": 1},
    ],
)
def test_worker_refuses_a_hand_crafted_bad_plan(bad_step: dict[str, object]) -> None:
    # Prepare
    worker = VirtualWorker("alice")
    plan = {"version": 1, "num_inputs": 1, "steps": [bad_step], "outputs": [1]}

    # Execute
    reply = worker.core.handle(m.SendPlan("evil", plan))

    # Assert
    assert isinstance(reply, m.ErrorReply)
    assert reply.code == "bad_request"
    assert worker.core.plan_ids() == []


def test_plan_constructor_validates_ops() -> None:
    with pytest.raises(WorkerError, match="allowlisted"):
        Plan(1, (PlanStep("eval", (Slot(0),)),), (1,))


def test_running_with_wrong_arity_or_ids_is_an_error_without_side_effects() -> None:
    # Prepare
    worker = VirtualWorker("alice")
    plan_ptr = worker.send_plan(trace_plan(_affine_relu_sum))
    x = worker.send(torch.ones(2, 4))
    before = worker.core.object_ids()

    # Execute / Assert
    with pytest.raises(RemoteError) as info:
        plan_ptr(x)
    assert info.value.code == "op_failed"
    with pytest.raises(RemoteError) as info:
        plan_ptr(x, "missing", "missing")
    assert info.value.code == "not_found"
    assert worker.core.object_ids() == before
