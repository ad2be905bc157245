"""Logistic regression trained on shared data with shared weights (``mpc.encrypted_training``).

The reference is the same SGD in float64 on the plain data — with the same
polynomial sigmoid (what the shares compute) and with the true sigmoid.
"""

from __future__ import annotations

import pytest
import torch

from fl.tabular import breast_cancer
from mpc.encrypted_training import LogisticSGD, train_plain, train_shared
from mpc.errors import MPCError
from mpc.protocols.remote_shares import COORDINATOR, ShareGroup
from workers.virtual import VirtualWorker


def _accuracy(weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    scores = x.double() @ weights[:-1] + weights[-1]
    return float(((scores > 0).double() == y.double()).double().mean())


def test_shared_training_learns_as_plaintext_training_does() -> None:
    data = breast_cancer(seed=0)
    sgd = LogisticSGD(epochs=5, batch_size=32, lr=0.01)
    alice, bob, charlie, hospital = (VirtualWorker(n) for n in ("a", "b", "c", "hospital"))
    with ShareGroup([alice, bob], charlie) as group:
        # The hospital shares its records and admits the coordinator to the results.
        audience = [hospital, COORDINATOR]
        x = group.share(hospital.send(data.x_train), audience=audience)
        y = group.share(hospital.send(data.y_train), audience=audience)
        model = train_shared(x, y, sgd, audience=audience)
        weights, bias = model.get()
    trained = torch.cat([weights, bias.reshape(1, 1)])
    assert all(a > b for a, b in zip(model.losses, model.losses[1:], strict=False)), model.losses
    assert model.losses[-1] < 0.6 * model.losses[0]
    same_polynomial = train_plain(data.x_train, data.y_train, sgd, exact=False)
    assert float((trained - same_polynomial).abs().max()) < 0.01
    true_sigmoid = train_plain(data.x_train, data.y_train, sgd, exact=True)
    shared_accuracy = _accuracy(trained, data.x_test, data.y_test)
    assert shared_accuracy > 0.9
    assert abs(shared_accuracy - _accuracy(true_sigmoid, data.x_test, data.y_test)) <= 0.01


def test_nothing_computed_from_the_data_opens_unless_its_owner_admits_it() -> None:
    data = breast_cancer(seed=1)
    alice, bob, charlie, hospital = (VirtualWorker(n) for n in ("a", "b", "c", "hospital"))
    with ShareGroup([alice, bob], charlie) as group:
        x = group.share(hospital.send(data.x_train[:40]))  # the hospital alone
        y = group.share(hospital.send(data.y_train[:40]))
        with pytest.raises(MPCError, match="may not see"):
            train_shared(x, y, LogisticSGD(epochs=1))  # the epoch's loss is refused


def test_labels_must_match_the_features() -> None:
    alice, bob, charlie = (VirtualWorker(n) for n in ("a", "b", "c"))
    with ShareGroup([alice, bob], charlie) as group:
        x, y = group.share(torch.ones(4, 2)), group.share(torch.ones(3, 1))
        with pytest.raises(MPCError, match=r"features \(n, d\) and labels \(n, 1\)"):
            train_shared(x, y, LogisticSGD())
