"""Secure aggregation: equals FedAvg, reveals only the sum, refuses tampered or replayed shares."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fl.training import TrainConfig
from fl.weighted_sum import weighted_average
from mpc.errors import MPCError
from mpc.flatten import flatten_update, float_keys
from mpc.protocols.secure_aggregation.coordinator import SecureInput, secure_average
from mpc.protocols.sessions import party_rng
from mpc.random import SecureRandom
from mpc.ring import FixedPointEncoder
from tests.mpc.secure_inputs import member_views, model_states, sealed_input, secure_inputs
from workers.core import TRAIN_X_ID, TRAIN_Y_ID
from workers.errors import RemoteError
from workers.messages import PartyReply, decode_message
from workers.party import Party
from workers.virtual import VirtualWorker


class RecordingWorker(VirtualWorker):
    """A virtual worker that keeps every reply the coordinator receives from it."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(worker_id)
        self.replies: list[Any] = []

    def _roundtrip(self, data: bytes) -> bytes:
        reply = super()._roundtrip(data)
        self.replies.append(decode_message(reply))
        return reply


@pytest.mark.parametrize(("clients", "committee"), [(2, 2), (5, 3), (4, 4)])
def test_secure_average_equals_fedavg(clients: int, committee: int) -> None:
    # Prepare
    workers = [VirtualWorker(f"w{i}") for i in range(clients)]
    states = model_states(clients)
    weights = [100 * (i + 1) + 7 for i in range(clients)]

    # Execute
    result = secure_average(secure_inputs(workers, states, weights), workers[:committee], states[0])

    # Assert: within 1e-4 per weight (the bound); in fact within n·2^-17.
    expected = weighted_average(states, weights)
    for key, value in expected.items():
        assert result.state[key].dtype == value.dtype
        assert (result.state[key] - value).abs().max().item() <= 1e-4
    assert result.total_weight == sum(weights)
    assert set(result.seconds) == {"keys", "share", "relay", "open"}
    assert all(w.core._party.secret_count() == 0 for w in workers)  # session forgotten


def test_coordinator_sees_ciphertexts_and_random_sum_shares_only() -> None:
    # Prepare: one client's update is a constant the coordinator could recognise.
    workers = [RecordingWorker(f"w{i}") for i in range(3)]
    states = model_states(3)
    marker = {k: torch.full_like(v, 0.5) for k, v in states[0].items()}
    states[0] = marker
    encoded = FixedPointEncoder().encode(torch.tensor([0.5 * 11])).numpy().tobytes()

    # Execute
    secure_average(secure_inputs(workers, states, [11, 22, 33]), workers, states[0])

    # Assert: no reply carries the client's encoded weighted values in the clear,
    # and the sum shares look uniform (each bit set about half the time).
    for worker in workers:
        for reply in worker.replies:
            if not isinstance(reply, PartyReply):
                continue
            for value in reply.values.values():
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, torch.Tensor):
                        assert encoded * 4 not in item.numpy().tobytes()
            share = reply.values.get("sum_share")
            if isinstance(share, torch.Tensor):
                bits = ((share.unsqueeze(1) >> torch.arange(64)) & 1).double().mean(0)
                assert bits.sub(0.5).abs().max().item() < 0.02  # ~110k values: 6σ ≈ 0.009


def _recovered_from_relayed(ciphertexts: list[torch.Tensor], update: torch.Tensor) -> bool:
    """The coordinator's attack: read every relayed message as a plaintext share (a kind
    byte, then a seed or a vector) starting at any offset up to 96 bytes — past any
    nonce or header — and add them up. True if some offset gives the update back."""
    length = update.numel()
    for offset in range(96):
        total = torch.zeros(length, dtype=torch.int64)
        for sealed in ciphertexts:
            data = sealed.numpy().tobytes()[offset:]
            if data[:1] == b"S" and len(data) >= 33:
                total += SecureRandom(data[1:33]).ring_elements((length,))
            elif data[:1] == b"F" and len(data) >= 1 + 8 * length:
                total += torch.frombuffer(bytearray(data[1 : 1 + 8 * length]), dtype=torch.int64)
            else:
                break
        else:
            if torch.equal(total, update):
                return True
    return False


def test_relayed_shares_cannot_be_read_by_the_coordinator() -> None:
    # Prepare
    workers = [RecordingWorker(f"w{i}") for i in range(3)]
    states = model_states(3)

    # Execute
    secure_average(secure_inputs(workers, states, [11, 22, 33]), workers, states[0])

    # Assert: parsing what client 0 handed the coordinator as plaintext shares
    # does not give its update back (it does when the relay is not encrypted:
    # see the next test).
    (reply,) = [
        r for r in workers[0].replies if isinstance(r, PartyReply) and "ciphertexts" in r.values
    ]
    update = FixedPointEncoder().encode(flatten_update(states[0], 11, float_keys(states[0])))
    assert not _recovered_from_relayed(reply.values["ciphertexts"], update)


def test_the_relay_attack_reads_an_unencrypted_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a relay whose "sealing" leaves the payload as it is.
    monkeypatch.setattr("mpc.protocols.sessions.seal", lambda _key, _public, payload, **_: payload)
    monkeypatch.setattr("mpc.protocols.sessions.open_sealed", lambda _key, _public, data, **_: data)

    # Execute / Assert: the attack of the test above recovers client 0's update.
    with pytest.raises(AssertionError):
        test_relayed_shares_cannot_be_read_by_the_coordinator()


def test_a_single_member_receives_the_same_distribution_for_any_update() -> None:
    # Prepare: two very different updates of 4,096 values.
    zeros = torch.zeros(4096)
    large = torch.full((4096,), 1000.0)

    # Execute: member 0 gets a seed, member 1 the full share (update − stream).
    views = {name: member_views(update, lead=1) for name, update in (("0", zeros), ("L", large))}

    # Assert: the seed is 32 random bytes and the full share's bits are fair coins
    # either way, so neither view tells the two updates apart.
    for seed, full in views.values():
        assert seed.numel() == 32
        words = torch.frombuffer(bytearray(full.numpy().tobytes()), dtype=torch.int64)
        bits = ((words.unsqueeze(1) >> torch.arange(64)) & 1).double().mean(0)
        assert bits.sub(0.5).abs().max().item() < 0.06  # 4,097 words: 6σ ≈ 0.047
    assert not torch.equal(views["0"][1], views["L"][1])


def test_tampered_or_replayed_share_is_refused_and_the_worker_goes_on() -> None:
    # Prepare: run keygen and share by hand to get at a sealed share.
    member, client = VirtualWorker("m"), VirtualWorker("c")
    state_id = sealed_input(client, {"w": torch.ones(8)}, 2).state_id
    public = {w.id: w.party_op("keygen", session="s")["public_key"] for w in (member, client)}
    reply = client.party_op(
        "secagg.share",
        session="s",
        state_id=state_id,
        weighting="samples",
        keys=["w"],
        clients=2,
        committee=["m", "c"],
        public_keys=[public["m"], public["c"]],
        lead=0,
        fractional_bits=16,
    )
    sealed = reply["ciphertexts"][0].clone()
    tampered = sealed.clone()
    tampered[40] ^= 1
    accept = {"session": "s", "sender": "c", "sender_public_key": public["c"], "length": 9}

    # Execute / Assert: a flipped bit fails authentication; the real share is
    # accepted once and refused when replayed; the worker still answers.
    with pytest.raises(RemoteError, match="failed authentication"):
        member.party_op("secagg.accept", ciphertext=tampered, **accept)
    member.party_op("secagg.accept", ciphertext=sealed, **accept)
    with pytest.raises(RemoteError, match="already counted"):
        member.party_op("secagg.accept", ciphertext=sealed, **accept)
    with pytest.raises(RemoteError, match="not registered"):
        member.party_op("secagg.nonsense", session="s")
    assert member.ping().worker_id == "m"


def _shared(
    clients: list[VirtualWorker], member: VirtualWorker
) -> tuple[dict[str, Any], list[Any]]:
    """Keys for everyone, and each client's share sealed for ``member`` (a committee of 2
    with the first client)."""
    workers = [member, *clients]
    public = {w.id: w.party_op("keygen", session="s")["public_key"] for w in workers}
    sealed = []
    for client in clients:
        reply = client.party_op(
            "secagg.share",
            session="s",
            state_id=sealed_input(client, {"w": torch.ones(8)}, 2).state_id,
            weighting="samples",
            keys=["w"],
            clients=len(clients),
            committee=[member.id, clients[0].id],
            public_keys=[public[member.id], public[clients[0].id]],
            lead=0,
            fractional_bits=16,
        )
        sealed.append(reply["ciphertexts"][0])
    return public, sealed


def test_a_revealed_session_accepts_nothing_more() -> None:
    # Prepare: two clients share for one member.
    member, clients = VirtualWorker("m"), [VirtualWorker("c0"), VirtualWorker("c1")]
    public, sealed = _shared(clients, member)

    def accept(position: int) -> None:
        member.party_op(
            "secagg.accept",
            session="s",
            sender=clients[position].id,
            sender_public_key=public[clients[position].id],
            ciphertext=sealed[position],
            length=9,
        )

    # Execute / Assert: one share is not a sum; two are; after the reveal the
    # session is closed, so an old share cannot be replayed into a smaller sum;
    # and a client shares once per session.
    reveal = {"session": "s", "contributors": ["c0", "c1"], "min_cohort": 2}
    accept(0)
    with pytest.raises(RemoteError, match="refusing to reveal a sum of 1"):
        member.party_op("secagg.reveal", **{**reveal, "contributors": ["c0"]})
    accept(1)
    assert member.party_op("secagg.reveal", **reveal)["count"] == 2
    with pytest.raises(RemoteError, match="closed"):
        accept(0)
    with pytest.raises(RemoteError, match="closed"):
        member.party_op("secagg.reveal", **reveal)
    with pytest.raises(RemoteError, match="already shared"):
        clients[1].party_op("secagg.share", session="s")


def test_bad_committee_is_one_clear_error() -> None:
    worker = VirtualWorker("w")
    state = model_states(1)[0]
    with pytest.raises(MPCError, match="committee of >= 2"):
        secure_average([SecureInput(worker, worker.send(state), 1)], [worker], state)


def test_sealed_training_result_reaches_party_steps_only() -> None:
    # Prepare: two workers train sealed on a little data.
    workers = [VirtualWorker(f"w{i}") for i in range(2)]
    state = model_states(1)[0]
    config = TrainConfig(epochs=1, batch_size=8, lr=0.1)
    trained = []
    for index, worker in enumerate(workers):
        worker.send(torch.rand(16, 1, 28, 28), obj_id=TRAIN_X_ID)
        worker.send(torch.randint(0, 10, (16,)), obj_id=TRAIN_Y_ID)
        pointer, reply = worker.train("mlp", worker.send(state), config, seed=index, sealed=True)
        trained.append(SecureInput(worker, pointer, reply.num_samples))

    # Execute / Assert: the coordinator can neither fetch a sealed state nor compute
    # on it; secure aggregation can; and the coordinator can still free it.
    with pytest.raises(RemoteError, match="sealed for secure aggregation"):
        workers[0].get(trained[0].state, delete=False)
    with pytest.raises(RemoteError, match="sealed"):
        workers[0].run_op("neg", trained[0].state)
    with pytest.raises(RemoteError, match="sealed"):  # training from it would copy it
        workers[0].train("mlp", trained[0].state, config, seed=0)
    with pytest.raises(RemoteError, match="sealed"):
        workers[0].evaluate("mlp", trained[0].state)
    result = secure_average(trained, workers, state)
    assert result.total_weight == 32
    sealed_id = trained[0].state.id if not isinstance(trained[0].state, str) else ""
    workers[0].delete([trained[0].state])
    assert sealed_id not in workers[0].core.object_ids()


def test_each_party_keys_one_stream_of_its_own() -> None:
    # Prepare: two parties; their streams are keyed on first use.
    a, b = Party("a", lambda _id: None), Party("b", lambda _id: None)

    # Execute
    first, then = party_rng(a).random_bytes(32), party_rng(a).random_bytes(32)
    other = party_rng(b).random_bytes(32)

    # Assert: a party's stream goes on (it is not keyed again) and is not the other's.
    assert party_rng(a) is party_rng(a)
    assert first != then and first != other
