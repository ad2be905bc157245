"""Remote shared tensors (``mpc.protocols.remote_shares``): shares on workers.

The reference is float64 torch on the plain values; fixed point with f = 16
bits carries an error of a few 2^-16 per truncation, scaled by the magnitudes
involved, which the bounds below allow for and no wrong sign, scale or share
could meet.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc.errors import MPCError
from mpc.protocols.remote_shares import COORDINATOR, RemoteShared, ShareGroup, share
from tests.worker_processes import worker_processes
from workers.core import WorkerCore
from workers.virtual import VirtualWorker

ULP = 2.0**-16


def _workers(*names: str) -> list[VirtualWorker]:
    return [VirtualWorker(name) for name in names]


def _secrets(*workers: VirtualWorker) -> list[int]:
    return [w.core._party.secret_count() for w in workers]


@pytest.fixture(params=[2, 3], ids=["2-parties", "3-parties"])
def group(request: pytest.FixtureRequest) -> Iterator[ShareGroup]:
    parties = _workers(*["alice", "bob", "carol"][: request.param])
    with ShareGroup(parties, VirtualWorker("charlie")) as g:
        yield g


def _close(got: torch.Tensor, want: torch.Tensor, ulps: float) -> None:
    bound = ulps * ULP * (1.0 + float(want.abs().max()))
    error = float((got - want).abs().max())
    assert error <= bound, f"error {error:g} above {bound:g}"


# ------------------------------------------------------------------ operations


def test_the_issue_example_stays_shared_and_opens_to_the_float64_value(group: ShareGroup) -> None:
    gen = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(4, 6, generator=gen), torch.randn(6, 3, generator=gen), torch.randn(3)
    y = (group.share(x) @ group.share(w) + b).square()
    assert isinstance(y, RemoteShared) and y.shape == (4, 3)
    _close(y.get(), (x.double() @ w.double() + b.double()) ** 2, 50)


def test_convolution_pooling_and_a_polynomial_activation(group: ShareGroup) -> None:
    gen = torch.Generator().manual_seed(2)
    images, kernel = torch.randn(2, 1, 6, 6, generator=gen), torch.randn(4, 1, 3, 3, generator=gen)
    out = group.share(images).conv2d(group.share(kernel), padding=1).avg_pool2d(2)
    out = out.polynomial([0.125, 0.5, 0.25]).flatten(1).mean(dim=1)
    plain = F.avg_pool2d(F.conv2d(images.double(), kernel.double(), padding=1), 2)
    _close(out.get(), (0.125 + 0.5 * plain + 0.25 * plain**2).flatten(1).mean(dim=1), 50)


_OPS = ["add", "sub", "neg", "add_public", "mul_public", "mul_int", "mul", "square", "matmul",
        "div", "sum", "reshape", "rmatmul_public", "transpose"]  # fmt: skip


def _apply(
    op: str,
    first: tuple[RemoteShared, torch.Tensor],
    second: tuple[RemoteShared, torch.Tensor],
    public: torch.Tensor,
) -> tuple[RemoteShared, torch.Tensor]:
    """Operation ``op`` on a shared tensor (and a second one) and on its float64 reference."""
    (a, ra), (b, rb), p = first, second, public.double()
    if op in ("add", "sub", "mul", "matmul"):
        shared = {"add": a + b, "sub": a - b, "mul": a * b, "matmul": a @ b}
        plain = {"add": ra + rb, "sub": ra - rb, "mul": ra * rb, "matmul": ra @ rb}
        return shared[op], plain[op]
    if op == "neg":
        return -a, -ra
    if op == "add_public":
        return a + public, ra + p
    if op == "rmatmul_public":
        return public @ a, p @ ra
    if op == "mul_public":
        return a * 0.375, ra * 0.375
    if op == "mul_int":
        return a * -3, ra * -3
    if op == "square":
        return a.square(), ra * ra
    if op == "div":
        return a / 3, ra / 3
    if op == "sum":
        return a.sum(dim=0, keepdim=True) + a, ra.sum(0, keepdim=True) + ra
    if op == "transpose":
        return a.t().narrow(0, 0, 3), ra.t()
    return a.reshape(9).reshape(3, 3), ra


@settings(deadline=None, derandomize=True, database=None, max_examples=25)
@given(
    parties=st.sampled_from([2, 3]),
    values=st.lists(st.floats(-2, 2, allow_nan=False), min_size=18, max_size=18),
    ops=st.lists(st.tuples(st.sampled_from(_OPS), st.integers(0, 7)), min_size=1, max_size=6),
)
def test_random_operation_sequences_match_float64(
    parties: int, values: list[float], ops: list[tuple[str, int]]
) -> None:
    """Random programs over shared 3×3 tensors against the same program in float64.

    Values that would leave the range where fixed point is exact enough (|v| > 50)
    are not operated on further; the bound grows with each step's truncations.
    """
    with ShareGroup(_workers(*["a", "b", "c"][:parties]), VirtualWorker("p")) as group:
        x = torch.tensor(values[:9], dtype=torch.float64).reshape(3, 3)
        y = torch.tensor(values[9:], dtype=torch.float64).reshape(3, 3)
        pool: list[tuple[RemoteShared, torch.Tensor]] = [
            (group.share(x.float()), x.float().double()),
            (group.share(y.float()), y.float().double()),
        ]
        public = torch.tensor([[0.5, -1.25, 2.0], [0.0, 1.5, -0.75], [1.0, 0.25, -2.0]])
        for op, pick in ops:
            (a, ra), (b, rb) = pool[pick % len(pool)], pool[(pick + 1) % len(pool)]
            if max(float(ra.abs().max()), float(rb.abs().max())) > 50 or a.shape != (3, 3):
                continue
            if b.shape != (3, 3):
                b, rb = a, ra
            result = _apply(op, (a, ra), (b, rb), public)
            pool.append(result)
        for shared, plain in pool:
            _close(shared.get(), plain, 8 * (1 + len(ops)))


def test_int_multiplication_is_exact_and_public_values_need_no_party_round() -> None:
    with ShareGroup(_workers("a", "b"), VirtualWorker("p")) as group:
        x = group.share(torch.tensor([1.5, -2.25]))
        assert torch.equal((x * 4).get(), torch.tensor([6.0, -9.0], dtype=torch.float64))
        assert group.dealt == 0  # linear operations use no dealt tuple


def test_small_public_factors_keep_their_precision(group: ShareGroup) -> None:
    """1/3000 encoded with 2^16 alone is 22 units, 0.8% off; the result must be exact
    to a few units of 2^-16 relative to the factor."""
    x = torch.full((4,), 3000.0)
    _close((group.share(x) / 3000).get(), torch.ones(4, dtype=torch.float64), 4)
    _close((group.share(x) * 0.001).get(), torch.full((4,), 3.0, dtype=torch.float64), 4)


def test_prefetched_tuples_are_used_before_fresh_ones() -> None:
    with ShareGroup(_workers("a", "b"), VirtualWorker("p")) as group:
        x = group.share(torch.ones(2, 2))
        group.prefetch("matmul", [(2, 2), (2, 2)], 3)
        assert group.dealt == 3
        for _ in range(3):
            x = x @ x
        assert group.dealt == 3
        _close(x.get(), torch.full((2, 2), 128.0, dtype=torch.float64), 50)


def test_prefetch_for_deals_what_a_computation_takes_before_it_runs(group: ShareGroup) -> None:
    gen = torch.Generator().manual_seed(6)
    x, w, b = torch.randn(4, 6, generator=gen), torch.randn(6, 3, generator=gen), torch.randn(3)
    sx, sw = group.share(x), group.share(w)
    owner = group.parties[1]
    held = group.share(
        owner.send(torch.randn(3, 2, generator=gen)), held=True, audience=[owner, COORDINATOR]
    )
    secrets_before = _secrets(*group.parties)  # type: ignore[arg-type]

    def computation() -> RemoteShared:
        return ((sx @ sw + b).square() / 3) @ held

    dealt = group.prefetch_for(computation, times=2)
    assert dealt == group.dealt and dealt > 0
    assert _secrets(*group.parties) >= secrets_before  # tracing made nothing on the parties
    first, second = computation(), computation()
    assert group.dealt == dealt  # both runs took dealt tuples only
    plain = ((x.double() @ w.double() + b.double()) ** 2 / 3) @ held.get()
    _close(first.get(), plain, 50)
    _close(second.get(), plain, 50)


def test_a_traced_computation_cannot_open_a_value(group: ShareGroup) -> None:
    x = group.share(torch.ones(2))
    with pytest.raises(MPCError, match="cannot open a value"):
        group.prefetch_for(lambda: (x * x).get())
    _close((x * x).get(), torch.ones(2, dtype=torch.float64), 4)  # planning is over


def test_the_share_function_reuses_one_group_for_the_same_workers() -> None:
    alice, bob, charlie = _workers("alice", "bob", "charlie")
    x = share(torch.tensor([1.0, 2.0]), parties=[alice, bob], provider=charlie)
    w = share(torch.tensor([3.0, -1.0]), parties=[alice, bob], provider=charlie)
    assert x.group is w.group
    _close((x * w).sum().get(), torch.tensor(1.0, dtype=torch.float64), 50)
    x.group.close()


# ------------------------------------------------------------------ owners and audiences


def test_a_worker_shares_its_value_and_only_it_may_see_results_opened() -> None:
    alice, bob, charlie, owner = _workers("alice", "bob", "charlie", "owner")
    value = torch.tensor([[0.5, -1.5], [2.0, 3.25]])
    with ShareGroup([alice, bob], charlie) as group:
        x = group.share(owner.send(value))  # audience: the owner alone
        doubled = x * 2
        with pytest.raises(MPCError, match="may not see"):
            doubled.get()
        held = doubled.reveal_to(owner)
        _close(owner.core._lookup(held), value.double() * 2, 10)  # type: ignore[arg-type]
        with pytest.raises(Exception, match="revealed to this worker alone"):
            owner.get(held)


def test_an_audience_including_the_coordinator_lets_it_open_the_result() -> None:
    alice, bob, charlie, owner = _workers("alice", "bob", "charlie", "owner")
    with ShareGroup([alice, bob], charlie) as group:
        x = group.share(owner.send(torch.tensor([1.0, -2.0])), audience=[owner, COORDINATOR])
        _close((x + 1).get(), torch.tensor([2.0, -1.0], dtype=torch.float64), 10)


def test_a_party_can_be_the_owner_of_what_it_shares() -> None:
    alice, bob, charlie = _workers("alice", "bob", "charlie")
    with ShareGroup([alice, bob], charlie) as group:
        x = group.share(alice.send(torch.tensor([4.0, 0.5])), audience=[alice, COORDINATOR])
        _close(x.get(), torch.tensor([4.0, 0.5], dtype=torch.float64), 2)


def test_a_workers_own_data_is_never_shared_with_a_wider_audience() -> None:
    core = WorkerCore("owner", objects={"data/x": torch.ones(3)}, private=frozenset({"data/x"}))
    owner = VirtualWorker("owner", core=core)
    alice, bob, charlie = _workers("alice", "bob", "charlie")
    with ShareGroup([alice, bob], charlie) as group:
        from workers.pointer import Pointer

        pointer = Pointer(owner, "data/x")
        with pytest.raises(MPCError, match="only it may see it opened"):
            group.share(pointer, audience=[owner, COORDINATOR])
        x = group.share(pointer)  # its owner alone: allowed
        with pytest.raises(MPCError, match="may not see"):
            x.sum().get()


def test_products_by_a_held_tensor_take_one_ring_operation_and_are_exact(
    group: ShareGroup,
) -> None:
    """A data owner and a model owner among the parties each hold their value whole."""
    data_owner, model_owner = group.parties[0], group.parties[1]
    gen = torch.Generator().manual_seed(4)
    images, kernel = torch.randn(3, 1, 8, 8, generator=gen), torch.randn(4, 1, 3, 3, generator=gen)
    dense = torch.randn(64, 5, generator=gen)
    audience = [data_owner, COORDINATOR]
    x = group.share(data_owner.send(images), held=True, audience=audience)
    w = group.share(model_owner.send(kernel), held=True, audience=[model_owner, *audience])
    m = group.share(model_owner.send(dense), held=True, audience=[model_owner, *audience])
    assert (x.holder, w.holder, m.t().holder) == (0, 1, 1)
    y = x.conv2d(w, padding=1).avg_pool2d(2).flatten(1) @ m
    # Held-product tuples (and truncation pairs for 3 parties): no Beaver triple.
    assert all(key.startswith(("held:", "trunc")) for key in group._stock)
    plain = F.avg_pool2d(F.conv2d(images.double(), kernel.double(), padding=1), 2)
    _close(y.get(), plain.flatten(1) @ dense.double(), 50)
    shared = group.share(images)  # a shared (not held) input by the same held weights
    _close(
        shared.conv2d(w, padding=1).get(), F.conv2d(images.double(), kernel.double(), padding=1), 50
    )


def test_only_a_party_can_hold_a_value() -> None:
    alice, bob, charlie, dana = _workers("alice", "bob", "charlie", "dana")
    with ShareGroup([alice, bob], charlie) as group:
        with pytest.raises(MPCError, match="only a party can hold"):
            group.share(dana.send(torch.ones(2)), held=True)
        with pytest.raises(MPCError, match="only a party's own value"):
            group.share(torch.ones(2), held=True)


# ------------------------------------------------------------------ bad input


def test_bad_input_is_one_clear_error_and_costs_no_party_any_state() -> None:
    alice, bob, charlie = _workers("alice", "bob", "charlie")
    with ShareGroup([alice, bob], charlie) as group:
        x, w = group.share(torch.ones(2, 3)), group.share(torch.ones(4, 5))
        before = _secrets(alice, bob, charlie)
        with pytest.raises(MPCError, match=r"matmul of shapes \(2, 3\) and \(4, 5\)"):
            x @ w
        with pytest.raises(MPCError, match="equal shapes"):
            x * w
        with pytest.raises(MPCError, match="add of shapes"):
            x + w
        with pytest.raises(MPCError, match="cannot reshape"):
            x.reshape(5)
        with pytest.raises(MPCError, match="outside the fixed-point range"):
            group.share(torch.tensor([1e15]))
        with pytest.raises(MPCError, match="non-zero public number"):
            x / 0
        assert _secrets(alice, bob, charlie) == before
        _close((x @ x.reshape(3, 2)).get(), torch.full((2, 2), 3.0, dtype=torch.float64), 20)


def test_tensors_of_two_party_sets_do_not_mix() -> None:
    alice, bob, carol, charlie = _workers("alice", "bob", "carol", "charlie")
    with (
        ShareGroup([alice, bob], charlie) as one,
        ShareGroup([alice, carol], charlie) as two,
        pytest.raises(MPCError, match="two share groups"),
    ):
        one.share(torch.ones(2)) + two.share(torch.ones(2))


class _FailsOnce(VirtualWorker):
    """A party whose connection drops once, in the middle of a product."""

    fail_on: str | None = None

    def party_op(self, op: str, **args: object) -> dict[str, object]:
        if op == self.fail_on:
            self.fail_on = None
            raise ConnectionError("connection lost")
        return super().party_op(op, **args)  # type: ignore[arg-type]


def test_a_party_that_drops_mid_product_fails_it_and_leaves_the_group_usable() -> None:
    alice, charlie = VirtualWorker("alice"), VirtualWorker("charlie")
    bob = _FailsOnce("bob")
    with ShareGroup([alice, bob], charlie) as group:
        x = group.share(torch.tensor([1.0, 2.0]))
        bob.fail_on = "shares.finish"  # alice finishes her half; bob never does
        with pytest.raises(MPCError, match="party 'bob' failed: connection lost"):
            x * x
        y = x * x + x  # the next computation runs, and is right
        _close(y.get(), torch.tensor([2.0, 6.0], dtype=torch.float64), 20)
        group._flush_drops(force=True)
        # Alice's half-made product was dropped: she holds x, y and y's two inputs at most.
        assert alice.core._party.keys(f"{group.session}/pending/") == []
    assert _secrets(alice, bob, charlie) == [0, 0, 0]


def test_a_party_that_disappears_is_named_and_another_group_goes_on() -> None:
    alice, bob, carol, charlie = _workers("alice", "bob", "carol", "charlie")
    group = ShareGroup([alice, bob], charlie)
    x = group.share(torch.ones(2))
    bob.close()
    with pytest.raises(MPCError, match="party 'bob' failed"):
        (x * x).get()
    group.close()
    with ShareGroup([alice, carol], charlie) as other:
        _close((other.share(torch.ones(2)) * 3.0).get(), torch.full((2,), 3.0).double(), 10)
    assert _secrets(alice, carol, charlie) == [0, 0, 0]


def test_dropping_a_tensor_keeps_those_whose_ids_it_prefixes() -> None:
    alice, bob, charlie = _workers("alice", "bob", "charlie")
    with ShareGroup([alice, bob], charlie) as group:
        handles = [group.share(torch.full((2,), float(i))) for i in range(12)]
        assert handles[1].id == "t1" and handles[10].id == "t10"
        handles[1].delete()
        group._flush_drops(force=True)
        _close(handles[10].get(), torch.full((2,), 10.0, dtype=torch.float64), 2)
        _close(handles[11].get(), torch.full((2,), 11.0, dtype=torch.float64), 2)


def test_closing_the_group_leaves_no_secret_on_any_worker() -> None:
    alice, bob, carol, charlie, owner = _workers("alice", "bob", "carol", "charlie", "owner")
    with ShareGroup([alice, bob, carol], charlie) as group:
        x = group.share(owner.send(torch.ones(2, 2)), audience=[owner, COORDINATOR])
        (x @ x).square().get()
        assert all(count > 0 for count in _secrets(alice, bob, carol))
    assert _secrets(alice, bob, carol, charlie, owner) == [0, 0, 0, 0, 0]


# ------------------------------------------------------------------ websocket workers


@pytest.mark.e2e
def test_the_same_code_over_websocket_worker_processes() -> None:
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(3, 4, generator=gen), torch.randn(4, 2, generator=gen)
    with (
        worker_processes(4) as (alice, bob, carol, charlie),
        ShareGroup([alice, bob, carol], charlie, parallel=True) as group,
    ):
        owner_x = group.share(alice.send(x), audience=[alice, COORDINATOR])
        y = (owner_x @ group.share(w)).polynomial([0.125, 0.5, 0.25])
        plain = x.double() @ w.double()
        _close(y.get(), 0.125 + 0.5 * plain + 0.25 * plain**2, 50)
        held = (owner_x * 2).reveal_to(alice)  # its audience: alice and the coordinator
        with pytest.raises(Exception, match="revealed to this worker alone"):
            alice.get(held)
        with pytest.raises(MPCError, match="may not see"):
            (owner_x * 2).reveal_to(bob)
