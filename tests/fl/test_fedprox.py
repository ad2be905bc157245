"""FedProx against Li et al. 2020's local objective, on a tiny linear model.

The reference minimises h(w) = F(w) + (μ/2)·‖w − w_t‖² by plain SGD, with the
proximal term written into the loss and differentiated by autograd — not the
gradient correction ``fl.training`` adds — on full batches, so both follow
the same steps.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fl.aggregation import ClientUpdate, FedAvg
from fl.data import Split
from fl.errors import ConfigError
from fl.fedprox import FedProx
from fl.strategies import load_strategy
from fl.training import TrainConfig, train_local
from flows.config import ExperimentConfig
from flows.rounds.clients import ClientSettings

MU, LR, EPOCHS = 0.5, 0.3, 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def _data() -> Split:
    gen = torch.Generator().manual_seed(1)
    return Split(torch.randn(6, 1, 2, 2, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2]))


def _by_the_objective(model: nn.Module, data: Split, mu: float) -> list[torch.Tensor]:
    start = [p.detach().clone() for p in model.parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    weight, bias = params
    for _ in range(EPOCHS):  # one full batch per epoch
        logits = data.x.flatten(1) @ weight.t() + bias
        proximal = sum(((p - s) ** 2).sum() for p, s in zip(params, start, strict=True))
        h = F.cross_entropy(logits, data.y) + mu / 2 * proximal
        grads = torch.autograd.grad(h, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= LR * g
    return [p.detach() for p in params]


def test_local_training_minimises_the_proximal_objective() -> None:
    model, data = _model(), _data()
    expected = _by_the_objective(model, data, MU)
    config = TrainConfig(epochs=EPOCHS, batch_size=len(data), lr=LR, prox_mu=MU)
    train_local(model, data, config, torch.Generator().manual_seed(2))
    for got, want in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6), (got, want)
    # And the term matters: without it the model ends elsewhere.
    plain = _model()
    train_local(
        plain, data, TrainConfig(epochs=EPOCHS, batch_size=len(data), lr=LR), torch.Generator()
    )
    assert not torch.allclose(next(plain.parameters()), next(model.parameters()), atol=1e-4)


def test_mu_zero_is_fedavgs_training_bit_for_bit() -> None:
    data = _data()
    a, b = _model(), _model()
    train_local(
        a, data, TrainConfig(epochs=2, batch_size=2, lr=LR), torch.Generator().manual_seed(3)
    )
    train_local(
        b,
        data,
        TrainConfig(epochs=2, batch_size=2, lr=LR, prox_mu=0.0),
        torch.Generator().manual_seed(3),
    )
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_the_server_averages_as_fedavg_and_the_clients_get_mu() -> None:
    state = {"w": torch.zeros(2)}
    updates = [
        ClientUpdate("a", {"w": torch.tensor([1.0, 0.0])}, 1, 0.0),
        ClientUpdate("b", {"w": torch.tensor([0.0, 2.0])}, 3, 0.0),
    ]
    assert torch.equal(
        FedProx(mu=0.1).aggregate(state, updates)["w"], FedAvg().aggregate(state, updates)["w"]
    )
    cfg = ExperimentConfig(levels="2", strategy="fedprox:mu=0.1")
    assert ClientSettings.of(cfg).train.prox_mu == 0.1
    assert ClientSettings.of(cfg, reference=True).train.prox_mu == 0.0  # level 1 stays clean
    assert isinstance(load_strategy("fedprox"), FedProx)


def test_bad_mu_and_dp_sgd_are_refused() -> None:
    with pytest.raises(ConfigError, match="mu must be >= 0"):
        load_strategy("fedprox:mu=-1")
    with pytest.raises(ConfigError, match="proximal term and DP-SGD"):
        TrainConfig(epochs=1, batch_size=1, lr=0.1, prox_mu=0.1, dp_clip=1.0)
    with pytest.raises(ConfigError, match="proximal term and --dp sample"):
        ExperimentConfig(levels="2", strategy="fedprox", dp="sample")


def test_mu_crosses_the_worker_protocol() -> None:
    config = TrainConfig(epochs=1, batch_size=4, lr=0.1, prox_mu=0.25)
    assert TrainConfig.from_dict(config.to_dict()) == config
