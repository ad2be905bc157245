"""A cheating party against shared tensors with and without SPDZ MACs.

One party (bob) runs a patched step: it adds δ to its share of an opened
value, to its masked input of a product, or to its share of a product's
result; or the relay alters an opening on its way to one party. Without MACs
(``remote_shares``) each attack shifts the value the coordinator gets, and
nothing notices — the tests assert the shifted value comes out. With MACs
(``authenticated_shares``) the check before the value is returned fails. A
cheater that knows the check's coefficients in advance (a predictable
generator) passes; drawn from the OS CSPRNG after the openings, they stop it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import torch

import mpc.protocols.authenticated_shares.coordinator as auth_coordinator
from mpc.errors import MPCError
from mpc.field import P, field_add, field_expand
from mpc.protocols.authenticated_shares import AuthenticatedGroup
from mpc.protocols.authenticated_shares import steps as auth_steps
from mpc.protocols.remote_shares import ShareGroup
from mpc.protocols.remote_shares import steps as ring_steps
from mpc.protocols.remote_shares.dealt_steps import MASK as RING_MASK
from workers.core import WorkerCore
from workers.party import _STEPS, Party
from workers.pointer import Pointer
from workers.virtual import VirtualWorker

X = torch.tensor([[0.5, -1.25], [2.0, 3.0]])
Y = torch.tensor([[1.5, 0.25], [-0.5, 2.0]])
DELTA = 1 << 20  # 16 in fixed point with 16 fractional bits: a visible shift

Step = Callable[[Party, Mapping[str, Any]], dict[str, Any]]


def _as_bob(monkeypatch: pytest.MonkeyPatch, name: str, cheat: Callable[..., Any]) -> None:
    """Bob runs ``cheat(party, args, honest_step)`` for step ``name``; alice the honest one."""
    honest: Step = _STEPS[name]

    def step(party: Party, args: Mapping[str, Any]) -> dict[str, Any]:
        if party.worker_id == "bob":
            return cheat(party, args, honest)  # type: ignore[no-any-return]
        return honest(party, args)

    monkeypatch.setitem(_STEPS, name, step)


@pytest.fixture
def workers() -> Iterator[tuple[VirtualWorker, VirtualWorker, VirtualWorker]]:
    yield VirtualWorker("alice"), VirtualWorker("bob"), VirtualWorker("charlie")


def _shifted_share(party: Party, args: Mapping[str, Any], honest: Step) -> dict[str, Any]:
    reply = honest(party, args)
    reply["share"] = reply["share"] + DELTA  # ring: wraps; the field version is below
    return reply


# ------------------------------------------------------------------ without MACs


def test_without_macs_a_party_shifts_an_opened_value_unnoticed(
    workers: tuple[VirtualWorker, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, charlie = workers
    _as_bob(monkeypatch, ring_steps.REVEAL, _shifted_share)
    with ShareGroup([alice, bob], charlie) as group:
        opened = group.share(X).get()
    assert torch.allclose(opened, X.double() + DELTA / 2**16)  # the attack worked


def test_without_macs_a_party_shifts_a_product_unnoticed(
    workers: tuple[VirtualWorker, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, charlie = workers

    def cheat(party: Party, args: Mapping[str, Any], honest: Step) -> dict[str, Any]:
        reply = honest(party, args)
        reply["masked"][0] = reply["masked"][0] + DELTA
        return reply

    _as_bob(monkeypatch, RING_MASK, cheat)
    with ShareGroup([alice, bob], charlie) as group:
        product = (group.share(X) * group.share(Y)).get()
    # d is off by δ, so the product is off by δ·y (truncated): silently wrong.
    assert torch.allclose(product, (X * Y).double() + (DELTA / 2**16) * Y.double(), atol=1e-3)


# ------------------------------------------------------------------ with MACs


def _field_shift(tensor: torch.Tensor) -> torch.Tensor:
    return field_add(tensor, torch.full_like(tensor, DELTA % P))


def test_with_macs_a_shifted_opened_share_fails_the_check(
    workers: tuple[VirtualWorker, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, charlie = workers

    def cheat(party: Party, args: Mapping[str, Any], honest: Step) -> dict[str, Any]:
        reply = honest(party, args)
        reply["share"] = _field_shift(reply["share"])
        return reply

    _as_bob(monkeypatch, auth_steps.OPEN, cheat)
    with AuthenticatedGroup([alice, bob], charlie) as group:
        x = group.share(X)
        with pytest.raises(MPCError, match="MAC check failed"):
            x.get()
        # SPDZ aborts: nothing more is computed or opened, and the workers forgot it all.
        with pytest.raises(MPCError, match="is closed"):
            x + x
    assert [w.core._party.secret_count() for w in (alice, bob, charlie)] == [0, 0, 0]


def test_with_macs_a_shifted_masked_input_of_a_product_fails_the_check(
    workers: tuple[VirtualWorker, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, charlie = workers

    def cheat(party: Party, args: Mapping[str, Any], honest: Step) -> dict[str, Any]:
        reply = honest(party, args)
        reply["masked"][0] = _field_shift(reply["masked"][0])
        return reply

    _as_bob(monkeypatch, auth_steps.MASK, cheat)
    with AuthenticatedGroup([alice, bob], charlie) as group:
        product = group.share(X) * group.share(Y)
        with pytest.raises(MPCError, match="MAC check failed"):
            product.get()


def test_with_macs_an_altered_share_of_a_result_fails_the_check(
    workers: tuple[VirtualWorker, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, charlie = workers

    def cheat(party: Party, args: Mapping[str, Any], honest: Step) -> dict[str, Any]:
        reply = honest(party, args)  # then it rewrites the share it keeps, not the MAC
        key = f"{args['session']}/a/{args['out']}"
        share, mac = party.secret(key)
        party.keep(key, (_field_shift(share), mac))
        return reply

    _as_bob(monkeypatch, auth_steps.FINISH, cheat)
    with AuthenticatedGroup([alice, bob], charlie) as group:
        product = group.share(X) @ group.share(Y)
        with pytest.raises(MPCError, match="MAC check failed"):
            (product + 1.0).get()


def test_with_macs_an_opening_altered_on_its_way_to_one_party_fails_the_check(
    workers: tuple[VirtualWorker, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay (a coordinator that cheats the others, say) sends bob a different d."""
    alice, bob, charlie = workers

    def cheat(party: Party, args: Mapping[str, Any], honest: Step) -> dict[str, Any]:
        altered = dict(args)
        altered["opened"] = [_field_shift(args["opened"][0]), *args["opened"][1:]]
        return honest(party, altered)

    _as_bob(monkeypatch, auth_steps.FINISH, cheat)
    with AuthenticatedGroup([alice, bob], charlie) as group:
        product = group.share(X) * group.share(Y)
        with pytest.raises(MPCError, match="MAC check failed"):
            product.get()


def _adaptive_cheat(seed: bytes) -> Callable[..., Any]:
    """Bob knows the check's seed: it shifts two opened elements by δ_0 = ρ_1 and
    δ_1 = −ρ_0, so Σ ρ_k δ_k = 0 and the check's σ does not move."""

    def cheat(party: Party, args: Mapping[str, Any], honest: Step) -> dict[str, Any]:
        reply = honest(party, args)
        share = reply["share"].clone().reshape(-1)
        rho = field_expand(seed, 0, (share.numel(),))  # the log holds this one opening
        shift = torch.zeros_like(share)
        shift[0], shift[1] = rho[1], (P - rho[0]) % P
        reply["share"] = field_add(share, shift).reshape(reply["share"].shape)
        return reply

    return cheat


def test_a_cheater_that_knows_the_coefficients_beforehand_passes_the_check(
    workers: tuple[VirtualWorker, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, charlie = workers
    seed = bytes(range(32))
    monkeypatch.setattr(auth_coordinator.os, "urandom", lambda n: seed[:n])  # predictable
    _as_bob(monkeypatch, auth_steps.OPEN, _adaptive_cheat(seed))
    with AuthenticatedGroup([alice, bob], charlie) as group:
        opened = group.share(X).get()
    assert not torch.allclose(opened, X.double())  # wrong, and the check passed


def test_coefficients_drawn_after_the_opening_stop_the_same_cheater(
    workers: tuple[VirtualWorker, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, charlie = workers
    _as_bob(monkeypatch, auth_steps.OPEN, _adaptive_cheat(bytes(range(32))))
    with AuthenticatedGroup([alice, bob], charlie) as group:
        x = group.share(X)
        with pytest.raises(MPCError, match="MAC check failed"):
            x.get()


def test_honest_parties_pass_every_check(workers: tuple[VirtualWorker, ...]) -> None:
    alice, bob, charlie = workers
    with AuthenticatedGroup([alice, bob], charlie, fractional_bits=12) as group:
        x, y = group.share(X), group.share(Y)
        opened = ((x @ y) + 1.0).square().get()
    assert torch.allclose(opened, ((X @ Y) + 1.0).square().double(), atol=1e-2)


def test_a_worker_cannot_input_its_own_data_for_the_coordinator_to_open(
    workers: tuple[VirtualWorker, ...],
) -> None:
    alice, bob, charlie = workers
    # Loaded by the worker itself: its own data.
    owner = VirtualWorker(
        "owner", core=WorkerCore("owner", objects={"private": X}, private=frozenset({"private"}))
    )
    with (
        AuthenticatedGroup([alice, bob], charlie) as group,
        pytest.raises(MPCError, match="this worker's alone"),
    ):
        group.share(Pointer(owner, "private", owned=False, shape=tuple(X.shape)))
