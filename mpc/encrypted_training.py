"""Logistic regression trained by SGD on shared data with shared weights.

PySyft 0.2's "encrypted training" and CrypTen's headline example, on
:mod:`mpc.protocols.remote_shares`: a data owner shares its features and
labels, the model's weights start shared, and every step of minibatch SGD —
the linear score, the sigmoid, the error, the gradient, the update — runs on
shares. Only what the audiences allow is ever opened: each epoch's loss (a
scalar) and the trained weights, to whoever the owner and the model's sharer
both admit.

The sigmoid is the degree-3 least-squares polynomial on [-8, 8],
σ(x) ≈ 0.5 + 0.15012 x − 0.0015930 x³ (Kim et al., "Secure logistic regression
based on homomorphic encryption: design and evaluation", JMIR Medical
Informatics 6(2), 2018), which needs two products per step and no comparison.
The loss is the mean squared error of that probability (the Brier score),
which a shared square gives without a logarithm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mpc.errors import MPCError
from mpc.protocols.remote_shares import COORDINATOR, RemoteShared
from workers.base import Worker

__all__ = ["SIGMOID_POLY", "LogisticSGD", "SharedLogistic", "sigmoid_poly", "train_plain"]

SIGMOID_POLY = (0.5, 0.15012, 0.0, -0.0015930)


def sigmoid_poly(x: torch.Tensor) -> torch.Tensor:
    """The polynomial sigmoid in plaintext (what the shared training computes)."""
    c0, c1, _, c3 = SIGMOID_POLY
    return c0 + c1 * x + c3 * x**3


@dataclass(frozen=True)
class LogisticSGD:
    """Minibatch SGD on the mean squared error of the polynomial sigmoid's
    probability; batches in the data's order (a public schedule)."""

    epochs: int = 5
    batch_size: int = 32
    lr: float = 0.01

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise MPCError(f"epochs and batch size must be positive and lr > 0, got {self}")

    def batches(self, rows: int) -> list[tuple[int, int]]:
        """(start, length) of every minibatch of an epoch over ``rows`` samples."""
        return [(s, min(self.batch_size, rows - s)) for s in range(0, rows, self.batch_size)]


@dataclass
class SharedLogistic:
    """Weights (d, 1) and bias (1,), shared; and the loss opened after each epoch."""

    weights: RemoteShared
    bias: RemoteShared
    losses: list[float]

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained weights and bias, opened to the coordinator if allowed."""
        return self.weights.get(), self.bias.get()


def train_shared(
    x: RemoteShared,
    y: RemoteShared,
    sgd: LogisticSGD,
    *,
    audience: Sequence[Worker | str] = (COORDINATOR,),
) -> SharedLogistic:
    """Train on shared features ``x`` (n, d) and labels ``y`` (n, 1) in {0, 1}.

    The zero initial weights are the coordinator's, shared with ``audience``
    (who, with the data's own audience, may see the results opened). Each
    epoch's loss is opened to the coordinator — refused if the data's owner
    did not admit it.
    """
    if len(x.shape) != 2 or tuple(y.shape) != (x.shape[0], 1):
        shapes = f"{tuple(x.shape)} and {tuple(y.shape)}"
        raise MPCError(f"features (n, d) and labels (n, 1), got {shapes}")
    group = x.group
    rows, features = x.shape
    weights = group.share(torch.zeros(features, 1), audience=list(audience))
    bias = group.share(torch.zeros(1), audience=list(audience))
    losses = []
    for _ in range(sgd.epochs):
        squared: RemoteShared | None = None
        for start, length in sgd.batches(rows):
            xb, yb = x.narrow(0, start, length), y.narrow(0, start, length)
            error = (xb @ weights + bias).polynomial(SIGMOID_POLY) - yb
            # d/dw of ½(p − y)² through the linear term of σ's polynomial is what
            # logistic regression's gradient step uses: X^T (p − y).
            step = sgd.lr / length
            weights = weights - (xb.t() @ error) * step
            bias = bias - error.sum(dim=0) * step
            batch_loss = error.square().sum()
            squared = batch_loss if squared is None else squared + batch_loss
        assert squared is not None
        losses.append(float((squared / rows).get()))
    return SharedLogistic(weights, bias, losses)


def train_plain(x: torch.Tensor, y: torch.Tensor, sgd: LogisticSGD, *, exact: bool) -> torch.Tensor:
    """The same training in float64 on plain tensors: with the polynomial sigmoid
    (``exact=False``: what the shared training computes) or the true one. Returns
    the weights with the bias last, (d + 1, 1)."""
    x, y = x.double(), y.double()
    weights = torch.zeros(x.shape[1], 1, dtype=torch.float64)
    bias = torch.zeros(1, dtype=torch.float64)
    for _ in range(sgd.epochs):
        for start, length in sgd.batches(x.shape[0]):
            xb, yb = x[start : start + length], y[start : start + length]
            z = xb @ weights + bias
            error = (torch.sigmoid(z) if exact else sigmoid_poly(z)) - yb
            weights = weights - xb.t() @ error * (sgd.lr / length)
            bias = bias - error.sum(dim=0) * (sgd.lr / length)
    return torch.cat([weights, bias.reshape(1, 1)])
