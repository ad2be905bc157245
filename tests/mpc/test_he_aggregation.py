"""HE aggregation: equals FedAvg within the flooding noise; the coordinator cannot decrypt;
bad ciphertexts and replays are refused with one clear error."""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import torch

from fl.weighted_sum import weighted_average
from mpc.errors import MPCError
from mpc.he import (
    CANARY_KEY_BYTES,
    CANARY_SLOTS,
    PARAMS,
    add_ciphertexts,
    canaries,
    chunk_count,
    client_canary_key,
    decrypt_sum,
    encrypt_vector,
    error_bound,
    flooding_sigma,
    gaussian,
    key_id,
    load_context,
    new_context,
    public_context_bytes,
)
from mpc.protocols.he_aggregation.coordinator import he_average
from mpc.random import SecureRandom
from tests.mpc.he_by_hand import he_session
from tests.mpc.secure_inputs import model_states, sealed_input, secure_inputs, trained_inputs
from tests.worker_processes import worker_processes
from workers.codec import Value
from workers.core import WorkerCore
from workers.errors import RemoteError
from workers.party import tensor_from_bytes
from workers.virtual import VirtualWorker

# Besides the flood (checked against its σ), float32 rounding of the averaged
# weights (|w| < 1) stays under 1e-6.
ROUNDING = 1e-6


def _average_bound(result: Any, total_weight: int) -> float:
    """|he average − FedAvg| per weight: 6.5σ of the flood over Σn (a 1.7e6-value tail
    reaches ~5.3σ), plus rounding."""
    return 6.5 * result.run.state["flood_sigma"] / total_weight + ROUNDING


class TamperingWorker(VirtualWorker):
    """A virtual worker whose ``he.encrypt`` reply the test can rewrite (a hostile path)."""

    def __init__(self, worker_id: str) -> None:
        super().__init__(worker_id)
        self.rewrite: Any = None

    def party_op(self, op: str, **args: Value) -> dict[str, Value]:
        reply = super().party_op(op, **args)
        if op == "he.encrypt" and self.rewrite is not None:
            reply = self.rewrite(reply)
        return reply


def _run(workers: list[Any], states: list[dict[str, torch.Tensor]], weights: list[int]) -> Any:
    return he_average(secure_inputs(workers, states, weights), workers[0], states[0])


@pytest.fixture(scope="module")
def states() -> list[dict[str, torch.Tensor]]:
    return model_states(3)


def test_he_average_equals_fedavg(states: list[dict[str, torch.Tensor]]) -> None:
    # Prepare
    workers = [VirtualWorker(f"w{i}") for i in range(3)]
    weights = [107, 207, 307]

    # Execute
    result = _run(workers, states, weights)

    # Assert
    expected = weighted_average(states, weights)
    for key, value in expected.items():
        assert result.state[key].dtype == value.dtype
        assert (result.state[key] - value).abs().max().item() <= _average_bound(result, 621)
    assert 0 < result.run.state["flood_sigma"] / sum(weights) < 1e-4
    assert result.total_weight == sum(weights)
    assert set(result.seconds) == {"keys", "context", "encrypt", "aggregate", "decrypt"}
    sizes = result.run.state["ciphertext_bytes"]
    assert set(sizes) == {"w0", "w1", "w2"} and min(sizes.values()) > 64 * 199_210
    assert all(w.core._party.secret_count() == 0 for w in workers)  # session forgotten


def test_ckks_decryption_error_stays_under_the_stated_bound() -> None:
    # Prepare: 100 clients' vectors of |x| <= 1e4, and 20 fresh ciphertexts.
    context = new_context()
    public = load_context(public_context_bytes(context), secret=False)
    generator = torch.Generator().manual_seed(0)
    values = [
        (torch.rand(5000, generator=generator, dtype=torch.float64) * 2 - 1) * 1e4
        for _ in range(100)
    ]
    marks = [canaries(os.urandom(CANARY_KEY_BYTES), chunk_count(5000)) for _ in range(100)]
    encrypted = [encrypt_vector(public, v, m) for v, m in zip(values, marks, strict=True)]

    # Execute
    total = add_ciphertexts(public, encrypted)
    opened = decrypt_sum(context, total, length=5000, expected=sum(marks), count=100)  # type: ignore[arg-type]
    fresh = [
        decrypt_sum(context, c, length=5000, expected=m, count=1)
        for c, m in zip(encrypted[:20], marks[:20], strict=True)
    ]

    # Assert: the measured maximum errors stay under B (mpc.he.error_bound).
    exact = torch.stack(values).sum(0)
    assert (opened - exact).abs().max().item() <= error_bound(100, float(exact.abs().max()))
    for got, want in zip(fresh, values[:20], strict=True):
        assert (got - want).abs().max().item() <= error_bound(1, float(want.abs().max()))


def test_the_flooding_noise_is_standard_normal_scaled_by_the_stated_sigma() -> None:
    # Prepare
    rng = SecureRandom(bytes(32))

    # Execute
    samples = gaussian(rng, 200_001)

    # Assert: N(0, 1) moments; σ follows √(d/2)·2^15·B.
    assert samples.numel() == 200_001 and samples.dtype == torch.float64
    assert abs(float(samples.mean())) < 0.01 and abs(float(samples.std()) - 1) < 0.01
    assert abs(float((samples**4).mean()) - 3) < 0.1
    sigma = flooding_sigma(1_000, 3, 10.0)
    assert sigma == pytest.approx(math.sqrt(500) * 2**15 * error_bound(3, 10.0))


def test_the_coordinator_context_holds_the_public_key_only() -> None:
    # Prepare
    context = new_context()
    public = load_context(public_context_bytes(context), secret=False)
    mark = canaries(os.urandom(CANARY_KEY_BYTES), 1)
    chunks = add_ciphertexts(public, [encrypt_vector(public, torch.ones(10), mark)] * 2)

    # Execute / Assert: the public context encrypts (clients use it) but cannot decrypt.
    assert not public.is_private() and not public.has_secret_key() and public.has_public_key()
    with pytest.raises(ValueError, match="secret"):
        decrypt_sum(public, chunks, length=10, expected=2 * mark, count=2)
    with pytest.raises(MPCError, match="expected a public"):
        load_context(context.serialize(save_secret_key=True), secret=False)
    no_key = context.serialize(save_public_key=False, save_secret_key=False)
    with pytest.raises(MPCError, match="no public key"):
        load_context(no_key, secret=False)


def test_nothing_the_coordinator_receives_loads_as_a_secret_context(
    states: list[dict[str, torch.Tensor]],
) -> None:
    # Prepare: record every byte string the workers hand the coordinator.
    workers = [TamperingWorker(f"w{i}") for i in range(3)]
    seen: list[bytes] = []

    def record(value: Value) -> None:
        if isinstance(value, list):
            for item in value:
                record(item)
        elif isinstance(value, torch.Tensor) and value.dtype == torch.uint8:
            seen.append(value.numpy().tobytes())

    for worker in workers:
        original = worker.party_op

        def recording(op: str, _original: Any = original, **args: Value) -> dict[str, Value]:
            reply: dict[str, Value] = _original(op, **args)
            for value in reply.values():
                record(value)
            return reply

        worker.party_op = recording  # type: ignore[method-assign]

    # Execute
    _run(workers, states, [1, 2, 3])

    # Assert: the public context is there, but no secret one (sealed contexts are
    # ChaCha20-Poly1305 ciphertexts), and the run kept no context afterwards.
    secret_loads = 0
    for data in seen:
        try:
            load_context(data, secret=True)
            secret_loads += 1
        except MPCError:
            pass
    assert secret_loads == 0
    assert len(seen) > 3 * 49


def _hostile_round(rewrite: Any, states: list[dict[str, torch.Tensor]]) -> None:
    workers = [TamperingWorker(f"w{i}") for i in range(3)]
    workers[2].rewrite = rewrite
    _run(workers, states, [10, 20, 30])


def _flip_middle(reply: dict[str, Value]) -> dict[str, Value]:
    chunks = list(reply["ciphertexts"])  # type: ignore[arg-type]
    data = bytearray(chunks[0].numpy().tobytes())
    data[len(data) // 2] ^= 0xFF
    chunks[0] = tensor_from_bytes(bytes(data))
    return {**reply, "ciphertexts": chunks}


def _flip_header(reply: dict[str, Value]) -> dict[str, Value]:
    chunks = list(reply["ciphertexts"])  # type: ignore[arg-type]
    data = bytearray(chunks[0].numpy().tobytes())
    data[10] ^= 0xFF
    chunks[0] = tensor_from_bytes(bytes(data))
    return {**reply, "ciphertexts": chunks}


def _other_key(reply: dict[str, Value]) -> dict[str, Value]:
    """Same parameters, same claimed key id, but a key from another session."""
    stranger = new_context()
    length = int(reply["length"])  # type: ignore[arg-type]
    marks = canaries(os.urandom(CANARY_KEY_BYTES), chunk_count(length))
    chunks = encrypt_vector(stranger, torch.zeros(length, dtype=torch.float64), marks)
    return {**reply, "ciphertexts": [tensor_from_bytes(c) for c in chunks]}


def _other_key_id(reply: dict[str, Value]) -> dict[str, Value]:
    return {**reply, "key_id": key_id(public_context_bytes(new_context()))}


def _short(reply: dict[str, Value]) -> dict[str, Value]:
    return {**reply, "length": int(reply["length"]) - 1}  # type: ignore[arg-type]


def _missing_chunk(reply: dict[str, Value]) -> dict[str, Value]:
    return {**reply, "ciphertexts": list(reply["ciphertexts"])[:-1]}  # type: ignore[arg-type]


def _foreign_params(reply: dict[str, Value]) -> dict[str, Value]:
    import tenseal as ts

    other = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 40])
    other.global_scale = 2.0**20
    chunks = list(reply["ciphertexts"])  # type: ignore[arg-type]
    chunks[0] = tensor_from_bytes(ts.ckks_vector(other, [1.0] * 10).serialize())
    return {**reply, "ciphertexts": chunks}


@pytest.mark.parametrize(
    ("rewrite", "error"),
    [
        (_flip_middle, "canaries are off|not a ciphertext"),
        (_flip_header, "not a ciphertext of this context"),
        (_other_key, "canaries are off"),
        (_other_key_id, "encrypted under key"),
        (_short, "encrypted 199209 values, the model has 199210"),
        (_missing_chunk, "no list of 49 ciphertexts"),
        (_foreign_params, "not a ciphertext of this context"),
    ],
)
def test_bad_ciphertexts_give_one_clear_error(
    rewrite: Any, error: str, states: list[dict[str, torch.Tensor]]
) -> None:
    with pytest.raises((MPCError, RemoteError), match=error):
        _hostile_round(rewrite, states)


def _held(workers: list[VirtualWorker], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Every worker encrypts ``state`` in one session run by hand; what the coordinator holds."""
    return he_session(workers, [state] * len(workers))


def _bytes_of(reply: dict[str, Value]) -> list[bytes]:
    return [c.numpy().tobytes() for c in reply["ciphertexts"]]  # type: ignore[union-attr]


def test_key_holder_refuses_a_single_client_or_a_second_decrypt() -> None:
    # Prepare
    workers = [VirtualWorker(f"k{i}") for i in range(2)]
    state = {"w": torch.linspace(-1, 1, 5000)}
    held = _held(workers, state)
    one = add_ciphertexts(held["public"], [_bytes_of(held["encrypted"][0])])
    both = add_ciphertexts(held["public"], [_bytes_of(r) for r in held["encrypted"]])

    def decrypt(worker: VirtualWorker, chunks: list[bytes], count: int) -> dict[str, Value]:
        return worker.party_op(
            "he.decrypt",
            session=held["session"],
            ciphertexts=[tensor_from_bytes(c) for c in chunks],
            length=5000,
            count=count,
            key_id=held["key_id"],
        )

    # Execute / Assert: count 1 is refused outright; one client's ciphertext passed
    # off as a sum of 2 fails the canaries — and closes the session, so even the
    # genuine sum is refused after.
    with pytest.raises(RemoteError, match="must be an integer in"):
        decrypt(workers[0], one, 1)
    with pytest.raises(RemoteError, match="not the key holder"):
        decrypt(workers[1], both, 2)
    with pytest.raises(RemoteError, match="canaries are off"):
        decrypt(workers[0], one, 2)
    with pytest.raises(RemoteError, match="closed"):
        decrypt(workers[0], both, 2)


def test_key_holder_decrypts_a_genuine_sum_once() -> None:
    # Prepare
    workers = [VirtualWorker(f"k{i}") for i in range(2)]
    state = {"w": torch.linspace(-1, 1, 5000)}
    held = _held(workers, state)
    both = add_ciphertexts(held["public"], [_bytes_of(r) for r in held["encrypted"]])
    args = {
        "session": held["session"],
        "ciphertexts": [tensor_from_bytes(c) for c in both],
        "length": 5000,
        "count": 2,
        "key_id": held["key_id"],
    }

    # Execute
    reply = workers[0].party_op("he.decrypt", **args)
    total, sigma = reply["sum"], reply["sigma"]

    # Assert: the exact sum plus the flood of the stated σ.
    exact = 10 * state["w"].double()
    assert isinstance(total, torch.Tensor)
    assert sigma == pytest.approx(flooding_sigma(5000, 2, float(exact.abs().max())))
    assert (total - exact).abs().max().item() < 6 * sigma
    with pytest.raises(RemoteError, match="closed"):
        workers[0].party_op("he.decrypt", **args)


def test_a_client_encrypts_once_and_checks_the_key() -> None:
    # Prepare
    workers = [VirtualWorker(f"k{i}") for i in range(2)]
    state = {"w": torch.ones(10)}
    held = _held(workers, state)

    # Execute / Assert
    with pytest.raises(RemoteError, match="already encrypted"):
        workers[1].party_op(
            "he.encrypt",
            session=held["session"],
            state_id="x",
            weighting="samples",
            keys=["w"],
            clients=2,
            key_id=held["key_id"],
        )


def test_key_holder_refuses_a_client_added_to_itself() -> None:
    """A + A has the canaries of 2 clients' worth of A, not those of A and B."""
    # Prepare
    workers = [VirtualWorker(f"k{i}") for i in range(2)]
    state = {"w": torch.linspace(-1, 1, 5000)}
    held = _held(workers, state)
    doubled = add_ciphertexts(held["public"], [_bytes_of(held["encrypted"][1])] * 2)

    # Execute / Assert
    with pytest.raises(RemoteError, match="canaries are off"):
        workers[0].party_op(
            "he.decrypt",
            session=held["session"],
            ciphertexts=[tensor_from_bytes(c) for c in doubled],
            length=5000,
            count=2,
            key_id=held["key_id"],
        )


def test_keyed_canaries_depend_on_key_and_client_and_are_in_range() -> None:
    # Prepare
    master, other = os.urandom(CANARY_KEY_BYTES), os.urandom(CANARY_KEY_BYTES)

    # Execute
    a, a_again, b, a_other = (
        canaries(client_canary_key(master, "a"), 3),
        canaries(client_canary_key(master, "a"), 3),
        canaries(client_canary_key(master, "b"), 3),
        canaries(client_canary_key(other, "a"), 3),
    )

    # Assert: the key holder recomputes each client's canaries; clients and keys differ.
    assert a.shape == (3, CANARY_SLOTS) and a.dtype == torch.float64
    assert torch.equal(a, a_again)
    assert not torch.equal(a, b) and not torch.equal(a, a_other)
    assert float(a.min()) >= 1.0 and float(a.max()) < 256.0


@pytest.mark.parametrize(
    ("swap", "error"),
    [
        ("key_id", "keys do not match"),
        ("public_context", "keys do not match"),
        ("public_key", "keys do not match"),
    ],
)
def test_a_client_refuses_a_key_or_parameters_the_coordinator_swapped(
    swap: str, error: str
) -> None:
    # Prepare
    import tenseal as ts

    workers = [VirtualWorker(f"k{i}") for i in range(2)]
    publics = [w.party_op("keygen", session="s")["public_key"] for w in workers]
    reply = workers[0].party_op(
        "he.keygen",
        session="s",
        clients=[workers[1].id],
        public_keys=publics[1:],
        weighting="samples",
        state_id=sealed_input(workers[0], {"w": torch.ones(4)}, 1).state_id,
    )
    small = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 40])
    small.global_scale = 2.0**20
    mine = public_context_bytes(new_context())  # the coordinator's own key pair
    forged: dict[str, Value] = {
        "key_id": key_id(mine),
        "public_context": tensor_from_bytes(public_context_bytes(small)),
        "public_key": tensor_from_bytes(mine),
    }

    # Execute / Assert: a coordinator that names another key, swaps in its own public
    # key (with a matching key id) or other parameters is caught.
    args: dict[str, Value] = {
        "public_context": reply["public_context"],
        "key_id": reply["key_id"],
    }
    if swap == "public_key":
        args.update(public_context=forged["public_key"], key_id=forged["key_id"])
    else:
        args[swap] = forged[swap]
    with pytest.raises(RemoteError, match=error):
        workers[1].party_op(
            "he.accept_key",
            session="s",
            sender=workers[0].id,
            sender_public_key=publics[0],
            sealed=reply["sealed"][0],  # type: ignore[index]
            **args,
        )


def test_values_beyond_the_ckks_range_are_refused() -> None:
    # Prepare: weight × value beyond max_abs_sum / (2·clients).
    workers = [VirtualWorker(f"w{i}") for i in range(2)]
    states = [{"w": torch.full((4,), 10.0)} for _ in range(2)]
    weight = int(PARAMS.max_abs_sum / 4 / 10) + 1

    # Execute / Assert
    with pytest.raises(RemoteError, match="range that keeps a CKKS sum"):
        _run(workers, states, [weight, 1])


def test_the_minimum_cohort_of_the_run_and_of_the_key_holder_is_kept(
    states: list[dict[str, torch.Tensor]],
) -> None:
    # Prepare: the key holder's own floor is 4 clients.
    strict = VirtualWorker("w0", core=WorkerCore("w0", min_cohort=4))
    workers = [strict, VirtualWorker("w1"), VirtualWorker("w2")]

    # Execute / Assert: the coordinator's min_cohort fails before any worker is
    # asked; the key holder's floor refuses the decryption.
    with pytest.raises(MPCError, match="needs >= 4 clients"):
        he_average(secure_inputs(workers, states, [1, 2, 3]), strict, states[0], min_cohort=4)
    with pytest.raises(MPCError, match="minimum cohort is 4"):
        _run(workers, states, [1, 2, 3])


# ------------------------------------------------------------------ websocket


@pytest.mark.e2e
def test_he_average_over_websocket_worker_processes(states: list[dict[str, torch.Tensor]]) -> None:
    # Prepare: three worker processes on loopback.
    with worker_processes(3) as workers:
        inputs, trained, weights = trained_inputs(workers, states[0])

        # Execute
        result = he_average(inputs, workers[1], states[0], parallel=True)

    # Assert
    expected = weighted_average(trained, weights)
    for key, value in expected.items():
        assert (result.state[key] - value).abs().max().item() <= _average_bound(
            result, sum(weights)
        )
