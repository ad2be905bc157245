"""Attacks on HE aggregation by a malicious coordinator (issue 18), alone or with one client.

(a) a client other than the key holder hands the coordinator all it holds: that
    must not decrypt another client's ciphertext;
(b) the coordinator's decryption query (Li & Micciancio, Eurocrypt 2021): the
    released sum minus the exact plaintext sum must be flooding noise of the
    documented σ, not the CKKS error that carries the secret key;
(c) one client's ciphertext, a partial sum or a sum below the minimum cohort is
    never decrypted.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
import tenseal as ts
import torch

from mpc.flatten import flatten_update, float_keys
from mpc.he import PARAMS, add_ciphertexts
from mpc.protocols.he_aggregation.coordinator import he_average
from tests.mpc.he_by_hand import he_session
from tests.mpc.secure_inputs import model_states, secure_inputs
from workers.codec import Value
from workers.errors import RemoteError
from workers.party import tensor_from_bytes
from workers.virtual import VirtualWorker

SECURITY_BITS = 30  # the documented statistical security of one released decryption


def _decrypt(holder: VirtualWorker, held: dict[str, Any], total: list[bytes], **args: Value) -> Any:
    return holder.party_op(
        "he.decrypt",
        session=held["session"],
        ciphertexts=[tensor_from_bytes(c) for c in total],
        length=5000,
        key_id=held["key_id"],
        **args,
    )


def _small_states(count: int) -> list[dict[str, torch.Tensor]]:
    return [{"w": torch.linspace(-1, 1, 5000) * (i + 1)} for i in range(count)]


def test_a_client_colluding_with_the_coordinator_cannot_decrypt_another_client() -> None:
    # Prepare: three clients; k1 (not the key holder) gives the coordinator its
    # whole session vault; the coordinator holds k2's ciphertext.
    workers = [VirtualWorker(f"k{i}") for i in range(3)]
    held = he_session(workers, _small_states(3), "attack")
    party = workers[1].core._party
    vault = {key: party.secret(key) for key in party.keys(f"{held['session']}/")}
    victim = held["chunks"][2][0]

    # Execute: try every CKKS context k1 holds on the victim's ciphertext.
    contexts = [v for v in vault.values() if isinstance(v, ts.Context)]
    decrypted = []
    for context in contexts:
        with contextlib.suppress(ValueError):  # "doesn't hold a secret_key"
            decrypted.append(ts.ckks_vector_from(context, victim).decrypt())

    # Assert: k1 holds a context (it must encrypt) but no secret key, so nothing decrypts.
    assert contexts, "the client should hold the session's public context"
    assert not any(c.is_private() or c.has_secret_key() for c in contexts)
    assert decrypted == []


def test_the_released_sum_is_flooded_not_the_raw_ckks_decryption() -> None:
    # Prepare: three clients with known updates; the test records what the key
    # holder returns to the coordinator (its decryption query's answer).
    workers = [VirtualWorker(f"w{i}") for i in range(3)]
    states, weights = model_states(3), [100, 200, 300]
    released: list[torch.Tensor] = []
    original = workers[0].party_op

    def recording(op: str, **args: Value) -> dict[str, Value]:
        reply = original(op, **args)
        if op == "he.decrypt":
            released.append(reply["sum"])  # type: ignore[arg-type]
        return reply

    workers[0].party_op = recording  # type: ignore[method-assign]
    keys = float_keys(states[0])
    exact = sum(flatten_update(s, n, keys)[:-1] for s, n in zip(states, weights, strict=True))
    assert isinstance(exact, torch.Tensor)

    # Execute
    he_average(secure_inputs(workers, states, weights), workers[0], states[0])

    # Assert: residual = released − exact is Gaussian noise of the documented σ:
    # σ = sqrt(d/2)·2^(s/2)·B, B = k·B_fresh + N·2^-52·max|sum| (mpc.he), computed
    # here from the parameters, independently of the implementation.
    (total,) = released
    residual = total - exact
    n, delta, k, d = PARAMS.poly_modulus_degree, 2.0**PARAMS.scale_bits, 3, exact.numel()
    fresh = math.sqrt(n / 3) * (6 + 8 * math.sqrt(n)) / delta
    bound = k * fresh + n * 2.0**-52 * float(exact.abs().max())
    sigma = math.sqrt(d / 2) * 2.0 ** (SECURITY_BITS / 2) * bound
    assert total.numel() == d  # the canary slots are not released
    assert 0.9 * sigma <= float(residual.std()) <= 1.1 * sigma
    assert abs(float(residual.mean())) <= 5 * sigma / math.sqrt(d)


@pytest.mark.parametrize(
    ("which", "args", "error"),
    [
        ("one", {"count": 1}, "must be an integer in"),
        ("one", {"count": 3}, "canaries are off"),
        ("two", {"count": 3}, "canaries are off"),
        ("two", {"count": 2}, "3 hold the key"),
        ("all", {"count": 3, "min_cohort": 4}, "minimum cohort"),
    ],
)
def test_one_client_a_partial_sum_or_a_small_cohort_is_refused(
    which: str, args: dict[str, Value], error: str
) -> None:
    # Prepare
    workers = [VirtualWorker(f"k{i}") for i in range(3)]
    held = he_session(workers, _small_states(3), "attack")
    picked = {"one": held["chunks"][1:2], "two": held["chunks"][:2], "all": held["chunks"]}
    total = add_ciphertexts(held["public"], picked[which])

    # Execute / Assert
    with pytest.raises(RemoteError, match=error):
        _decrypt(workers[0], held, total, **args)
