"""Shared tensors with SPDZ MACs (``mpc.protocols.authenticated_shares``): results, errors.

Nothing is truncated, so every result is exact: it must equal float64 on the
inputs as encoded (rounded to the group's fractional bits). The attacks are in
``tests/adversary/test_authenticated_shares_attacks.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc.errors import MPCError
from mpc.protocols.authenticated_shares import MAX_SCALE, AuthenticatedGroup, AuthenticatedShared
from mpc.protocols.authenticated_shares.steps import MASK
from tests.worker_processes import worker_processes
from workers.virtual import VirtualWorker

BITS = 12


def _encoded(x: torch.Tensor, bits: int = BITS) -> torch.Tensor:
    """x as the group holds it: rounded to ``bits`` fractional bits, in float64."""
    return torch.round(x.double() * 2**bits) / 2**bits


def _secrets(*workers: VirtualWorker) -> list[int]:
    return [w.core._party.secret_count() for w in workers]


@pytest.fixture(params=[2, 3], ids=["2-parties", "3-parties"])
def group(request: pytest.FixtureRequest) -> Iterator[AuthenticatedGroup]:
    parties = [VirtualWorker(f"p{i}") for i in range(request.param)]
    with AuthenticatedGroup(parties, VirtualWorker("dealer"), fractional_bits=BITS) as g:
        yield g


def test_the_issue_example_is_exact(group: AuthenticatedGroup) -> None:
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(5, 4, generator=gen), torch.randn(4, 3, generator=gen), torch.randn(3)
    y = (group.share(x) @ group.share(w) + b).square()
    assert y.scale == 4 * BITS
    expected = (_encoded(x) @ _encoded(w) + _encoded(b, 2 * BITS)).square()
    assert torch.equal(y.get(), expected)


@settings(max_examples=15, deadline=None)
@given(
    program=st.lists(
        st.sampled_from(["add", "sub", "neg", "mul", "square", "add_public", "int", "sum0"]),
        min_size=1,
        max_size=4,
    ),
    seed=st.integers(0, 2**16),
)
def test_random_programs_are_exact(program: list[str], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    parties = [VirtualWorker("p0"), VirtualWorker("p1")]
    with AuthenticatedGroup(parties, VirtualWorker("dealer"), fractional_bits=8) as group:
        a, b = torch.randn(3, 2, generator=gen), torch.randn(3, 2, generator=gen)
        x, y = group.share(a), group.share(b)
        want, other = _encoded(a, 8), _encoded(b, 8)
        for op in program:
            if op == "mul" and x.scale + y.scale > MAX_SCALE:
                continue
            if op == "square" and 2 * x.scale > MAX_SCALE:
                continue
            if op == "sum0":
                x, want = x.sum(0, keepdim=True), want.sum(0, keepdim=True)
                y, other = y.sum(0, keepdim=True), other.sum(0, keepdim=True)
                continue
            x, want = _step(op, x, y, want, other)
        assert torch.equal(x.get(), want)


def _step(
    op: str,
    x: AuthenticatedShared,
    y: AuthenticatedShared,
    want: torch.Tensor,
    other: torch.Tensor,
) -> tuple[AuthenticatedShared, torch.Tensor]:
    if op == "add":
        return x + y, want + other
    if op == "sub":
        return x - y, want - other
    if op == "neg":
        return -x, -want
    if op == "mul":
        return x * y, want * other
    if op == "square":
        return x.square(), want.square()
    if op == "add_public":
        return x + 0.5, want + 0.5
    return x * 3, want * 3


def test_public_operands_and_shapes(group: AuthenticatedGroup) -> None:
    x = torch.tensor([[0.5, -1.25, 2.0], [3.0, 0.75, -0.5]])
    m = torch.tensor([[1.0, 2.0], [0.5, -1.0], [0.25, 4.0]])
    s = group.share(x)
    exact = _encoded(x)
    assert torch.equal((s @ m).get(), exact @ _encoded(m))
    assert torch.equal((m.t() @ s.t()).get(), _encoded(m).t() @ exact.t())
    assert torch.equal((s * 0.5).get(), exact * 0.5)
    assert torch.equal((1.0 - s).get(), 1.0 - exact)
    # 1/3 is a public factor with the group's fractional bits, like every other.
    assert torch.equal(s.mean(1).get(), exact.sum(1) * _encoded(torch.tensor(1 / 3)))
    assert torch.equal(s.flatten().reshape(3, 2).get(), exact.reshape(3, 2))
    assert torch.equal((s.sum() + s.sum(dim=(0, 1))).get(), 2 * exact.sum())


def test_a_worker_inputs_its_value_without_the_coordinator_seeing_it() -> None:
    alice, bob, dealer, owner = (VirtualWorker(n) for n in ("alice", "bob", "dealer", "owner"))
    value = torch.tensor([1.5, -2.25, 0.125])
    pointer = owner.send(value)
    with AuthenticatedGroup([alice, bob], dealer) as group:
        x = group.share(pointer)
        assert torch.equal((x * x).get(), value.double() ** 2)


def test_bad_input_is_one_clear_error_and_costs_no_party_any_state() -> None:
    alice, bob, dealer = VirtualWorker("alice"), VirtualWorker("bob"), VirtualWorker("dealer")
    with AuthenticatedGroup([alice, bob], dealer) as group:
        x, w = group.share(torch.ones(2, 3)), group.share(torch.ones(4, 5))
        before = _secrets(alice, bob, dealer)
        with pytest.raises(MPCError, match=r"matmul: a matmul of \(2, 3\) by \(4, 5\)"):
            x @ w
        with pytest.raises(MPCError, match="equal shapes"):
            x * w
        with pytest.raises(MPCError, match="do not broadcast"):
            x + w
        product = x * x  # 32 fractional bits
        before = _secrets(alice, bob, dealer)
        with pytest.raises(MPCError, match="64 fractional bits, more than 48"):
            product.square()
        with pytest.raises(MPCError, match="outside the field fixed-point range"):
            group.share(torch.tensor([1e15]))
        assert _secrets(alice, bob, dealer) == before
        assert torch.equal(product.get(), torch.ones(2, 3, dtype=torch.float64))


def test_groups_do_not_mix_and_a_party_refuses_a_reused_tuple(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice, bob, carol, dealer = (VirtualWorker(n) for n in ("alice", "bob", "carol", "dealer"))
    with (
        AuthenticatedGroup([alice, bob], dealer) as one,
        AuthenticatedGroup([alice, carol], dealer) as two,
    ):
        with pytest.raises(MPCError, match="two authenticated groups"):
            one.share(torch.ones(2)) + two.share(torch.ones(2))
        # A replayed tuple: the coordinator sends alice the same dealt tuple twice.
        sent: list[dict[str, object]] = []
        original = VirtualWorker.party_op

        def recording(worker: VirtualWorker, op: str, **args: object) -> dict[str, object]:
            if op == MASK and worker is alice:
                sent.append(dict(args, out="replayed"))
            return original(worker, op, **args)  # type: ignore[arg-type]

        monkeypatch.setattr(VirtualWorker, "party_op", recording)
        x = one.share(torch.ones(2))
        x * x
        with pytest.raises(Exception, match="used already"):
            original(alice, MASK, **sent[0])  # type: ignore[arg-type]


def test_closing_the_group_leaves_no_secret_on_any_worker() -> None:
    alice, bob, dealer, owner = (VirtualWorker(n) for n in ("alice", "bob", "dealer", "owner"))
    with AuthenticatedGroup([alice, bob], dealer) as group:
        x = group.share(owner.send(torch.ones(2, 2)))
        (x @ x).get()
        assert all(count > 0 for count in _secrets(alice, bob))
    assert _secrets(alice, bob, dealer, owner) == [0, 0, 0, 0]


@pytest.mark.e2e
def test_the_same_code_over_websocket_worker_processes() -> None:
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(3, 4, generator=gen), torch.randn(4, 2, generator=gen)
    with (
        worker_processes(4) as (alice, bob, carol, dealer),
        AuthenticatedGroup([alice, bob, carol], dealer, fractional_bits=BITS, parallel=True) as g,
    ):
        shared_x = g.share(alice.send(x))
        y = (shared_x @ g.share(w) + 1.0).square()
        assert torch.equal(y.get(), (_encoded(x) @ _encoded(w) + 1.0).square())
