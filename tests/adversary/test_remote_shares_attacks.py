"""A cheating coordinator against remote shared tensors (``mpc.protocols.remote_shares``).

The value under attack is an owner's: a worker shares a tensor it holds, and
the group multiplies it (a Beaver product, with a tuple the provider dealt).
The coordinator records every frame it relays and searches them for the
owner's encoding — as any sum of up to three tensors it saw or could expand
from a seed it saw. The search is checked against the real encoding, and it is
shown to succeed where the channel is not encrypted (sealing patched away) or
the owner's generator predictable; with the product as it is, it fails.
"""

from __future__ import annotations

import pytest
import torch

from fl.models import build_model, get_state
from mpc.errors import MPCError
from mpc.protocols.remote_shares import COORDINATOR, ShareGroup
from mpc.protocols.remote_shares.dealt_steps import MASK
from mpc.protocols.remote_shares.steps import ACCEPT, REVEAL, SPLIT
from mpc.random import SEED_BYTES, SecureRandom, expand
from mpc.ring import FixedPointEncoder
from tests.adversary.transcripts import TappedWorker, recover
from workers.pointer import Pointer
from workers.virtual import VirtualWorker

VALUE = torch.tensor([[0.75, -1.5], [2.25, 3.0]])
ENCODING = FixedPointEncoder().encode(VALUE)


def _owner_product(transcript: list[bytes]) -> tuple[ShareGroup, VirtualWorker]:
    """An owner shares VALUE among alice and bob (charlie deals); the group squares
    it by a Beaver product and opens the result to the owner only."""
    alice, bob, charlie, owner = (TappedWorker(n, transcript) for n in ("a", "b", "c", "o"))
    group = ShareGroup([alice, bob], charlie)
    pointer = owner.send(VALUE)
    x = group.share(pointer)
    (x * x).reveal_to(owner)
    return group, owner


def test_the_coordinators_transcript_holds_nothing_that_sums_to_the_owners_value() -> None:
    transcript: list[bytes] = []
    group, _ = _owner_product(transcript)
    group.close()
    assert recover(transcript, tuple(VALUE.shape), ENCODING) is None


def test_the_search_reads_an_unencrypted_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a relay whose "sealing" leaves every payload as it is.
    monkeypatch.setattr("mpc.protocols.sessions.seal", lambda _key, _public, payload, **_: payload)
    monkeypatch.setattr("mpc.protocols.sessions.open_sealed", lambda _key, _public, data, **_: data)
    transcript: list[bytes] = []
    group, _ = _owner_product(transcript)
    group.close()
    recovered = recover(transcript, tuple(VALUE.shape), ENCODING)
    assert recovered is not None and torch.equal(recovered, ENCODING)


def _held_product(transcript: list[bytes]) -> None:
    """Alice holds VALUE (data), Bob holds WEIGHTS (a model): one product by the
    held weights, opened to Alice only; Charlie deals."""
    alice, bob, charlie = (TappedWorker(n, transcript) for n in ("a", "b", "c"))
    with ShareGroup([alice, bob], charlie) as group:
        x = group.share(alice.send(VALUE), held=True)
        w = group.share(bob.send(WEIGHTS), held=True, audience=[bob, alice])
        (x @ w).reveal_to(alice)


WEIGHTS = torch.tensor([[0.5, -0.25], [1.75, 2.0]])


@pytest.mark.parametrize("target", ["data", "weights"])
def test_a_held_product_leaves_neither_owners_value_in_the_transcript(target: str) -> None:
    transcript: list[bytes] = []
    _held_product(transcript)
    value = ENCODING if target == "data" else FixedPointEncoder().encode(WEIGHTS)
    assert recover(transcript, (2, 2), value) is None


def test_the_search_reads_a_held_product_over_an_unencrypted_relay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("mpc.protocols.sessions.seal", lambda _key, _public, payload, **_: payload)
    monkeypatch.setattr("mpc.protocols.sessions.open_sealed", lambda _key, _public, data, **_: data)
    transcript: list[bytes] = []
    _held_product(transcript)
    weights = FixedPointEncoder().encode(WEIGHTS)
    assert recover(transcript, (2, 2), weights) is not None  # f = W − b, and b's seed
    assert recover(transcript, (2, 2), ENCODING) is not None  # e = x − a, and a's seed


def test_a_held_tensor_is_masked_once_and_for_its_holder_only() -> None:
    """A second f = W − b' would open b' − b; a mask dealt for another holder would
    have the zero-share party publish f = −b. The provider and the parties refuse."""
    alice, bob, charlie = (VirtualWorker(n) for n in ("a", "b", "c"))
    with ShareGroup([alice, bob], charlie) as group:
        w = group.share(bob.send(WEIGHTS), held=True)
        group._fix(w)
        f = bob.party_op(
            "shares.fix", session=group.session, id=w.id,
            sealed=torch.zeros(60, dtype=torch.uint8), provider_key=group._keys["c"],
        )["f"]  # fmt: skip
        assert torch.equal(f, alice.core._party.secret(f"{group.session}/fixed/{w.id}/f"))
        with pytest.raises(Exception, match="for another holder"):
            charlie.party_op(
                "shares.deal_fixed", session=group.session, id=w.id, shape=[2, 2],
                holder="a", holder_key=group._keys["a"],
            )  # fmt: skip
        with pytest.raises(Exception, match="it made f itself"):
            bob.party_op(
                "shares.fixed",
                session=group.session,
                id=w.id,
                f=torch.zeros(2, 2, dtype=torch.int64),
            )
        with pytest.raises(Exception, match="is held by 'b', not 'a'"):
            charlie.party_op(
                "shares.deal_held", session=group.session, kind="matmul", shapes=[[2, 2], [2, 2]],
                w=w.id, holder="a", count=1, public_keys=[group._keys["a"], group._keys["b"]],
            )  # fmt: skip


def test_a_value_revealed_to_a_worker_is_never_shared_again_with_others() -> None:
    """Reveal the owner's value to it, then ask it to share that value with the
    coordinator in the audience: it refuses (it would open what was its alone)."""
    alice, bob, charlie = (VirtualWorker(n) for n in ("a", "b", "c"))
    with ShareGroup([alice, bob], charlie) as group:
        x = group.share(alice.send(VALUE), held=True)  # alice's alone
        held = x.reveal_to(alice, obj_id="opened")
        pointer = Pointer(alice, held, owned=False)
        with pytest.raises(MPCError, match="only it may see it opened"):
            group.share(pointer, audience=[alice, COORDINATOR])
        with pytest.raises(Exception, match="revealed to this worker alone"):
            alice.evaluate("mlp", alice.send(get_state(build_model("mlp"))), x_id=held, y_id=held)


def _colluding_bob_and_a_guess(predictable: bool, monkeypatch: pytest.MonkeyPatch) -> bool:
    """The coordinator and bob collude: bob's share plus alice's share as the
    coordinator predicts it (the owner's generator run from a guessed key)."""
    if predictable:
        monkeypatch.setattr(
            "mpc.protocols.remote_shares.steps.party_rng",
            lambda _party: SecureRandom(bytes(32)),  # a generator the attacker can rerun
        )
    alice, bob, charlie, owner = (VirtualWorker(n) for n in ("a", "b", "c", "o"))
    with ShareGroup([alice, bob], charlie) as group:
        x = group.share(owner.send(VALUE))
        bobs_share, _ = bob.core._party.secret(f"{group.session}/v/{x.id}")
        guessed_seed = SecureRandom(bytes(32)).random_bytes(SEED_BYTES)
        alices_share = expand(guessed_seed, 0, tuple(VALUE.shape))
        return torch.equal(bobs_share + alices_share, ENCODING)


def test_a_coordinator_colluding_with_one_party_learns_nothing_from_the_csprng(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not _colluding_bob_and_a_guess(False, monkeypatch)


def test_the_collusion_succeeds_against_a_predictable_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _colluding_bob_and_a_guess(True, monkeypatch)


def test_a_dealt_tuple_is_never_used_twice() -> None:
    """Masking two values with one tuple would open their difference."""
    alice, bob, charlie = (VirtualWorker(n) for n in ("a", "b", "c"))
    with ShareGroup([alice, bob], charlie) as group:
        x, y = group.share(torch.ones(2)), group.share(torch.zeros(2))
        dealt = group._tuple("square", [(2,)], {})
        args = {
            "session": group.session, "kind": "square", "shapes": [[2]],
            "serial": dealt["serial"], "sealed": dealt["sealed"][0],
            "provider_key": group._keys["c"],
        }  # fmt: skip
        alice.party_op(MASK, inputs=[x.id], out="first", **args)
        with pytest.raises(Exception, match="used already"):
            alice.party_op(MASK, inputs=[y.id], out="second", **args)


def test_a_coordinator_cannot_widen_the_audience_it_relays() -> None:
    alice, bob, charlie, owner = (VirtualWorker(n) for n in ("a", "b", "c", "o"))
    with ShareGroup([alice, bob], charlie) as group:
        owner_key = group._keygen(owner)
        owner.party_op(
            "shares.join", session=group.session, parties=["a", "b"], provider="c",
            fractional_bits=16,
        )  # fmt: skip
        pointer = owner.send(VALUE)
        keys = [group._keys["a"], group._keys["b"]]
        sealed = owner.party_op(
            SPLIT, session=group.session, obj_id=pointer.id_on(owner), id="x",
            audience=["o"], public_keys=keys,
        )["sealed"]  # fmt: skip
        assert isinstance(sealed, list)
        with pytest.raises(Exception, match="failed authentication"):
            alice.party_op(
                ACCEPT, session=group.session, id="x", owner="o", owner_key=owner_key,
                audience=["o", COORDINATOR], shape=[2, 2], sealed=sealed[0],
            )  # fmt: skip
        with pytest.raises(Exception, match="no secret"):
            alice.party_op(REVEAL, session=group.session, id="x", to=COORDINATOR)


def test_a_party_refuses_to_reveal_outside_the_audience() -> None:
    alice, bob, charlie, owner = (VirtualWorker(n) for n in ("a", "b", "c", "o"))
    with ShareGroup([alice, bob], charlie) as group:
        x = group.share(owner.send(VALUE))
        for worker in (alice, bob):
            with pytest.raises(Exception, match="may not see"):
                worker.party_op(REVEAL, session=group.session, id=x.id, to=COORDINATOR)
        with pytest.raises(MPCError, match="may not see"):
            (x + x).reveal_to(charlie)


def test_a_party_refuses_to_make_a_result_far_larger_than_its_inputs() -> None:
    """Two allowed inputs, a product or broadcast far past the size bound: refused
    before anything is allocated."""
    alice, bob, charlie = (VirtualWorker(n) for n in ("a", "b", "c"))
    with ShareGroup([alice, bob], charlie) as group:
        column, row = group.share(torch.ones(2**13, 1)), group.share(torch.ones(1, 2**14))
        with pytest.raises(Exception, match="more than 67108864"):
            alice.party_op(
                "shares.local", session=group.session, operation="matmul_public",
                inputs=[column.id], out="big", value=torch.ones(1, 2**14, dtype=torch.int64),
            )  # fmt: skip
        with pytest.raises(Exception, match="more than 67108864"):
            alice.party_op(
                "shares.local", session=group.session, operation="lincomb",
                inputs=[column.id, row.id], out="big", coefficients=[1, 1], constant=0, shift=16,
            )  # fmt: skip
