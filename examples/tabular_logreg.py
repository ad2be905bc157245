"""Federated logistic regression on a tabular data set: breast cancer diagnosis.

Wisconsin's diagnostic breast cancer data (569 tumours, 30 features; in
scikit-learn's wheel, no download), standardized with the training rows'
statistics. The model is one linear unit, σ(w·x + b); the loss is the binary
cross-entropy on its logit, and evaluation thresholds the logit at 0 — the
task brings its own evaluate step, since fedsim's default takes the argmax of
one score per class. FedAvg of logistic regressions is the average of their
weights, so every aggregation (secure, homomorphic, robust, DP) applies.

    .venv/bin/fedsim run --task examples/tabular_logreg.py:task --levels baseline,2,3,4 \\
        --lr 0.05 --batch-size 16
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fl.data import Split
from fl.tabular import breast_cancer
from fl.training import EvalResult


def _data(split: str) -> Split:
    data = breast_cancer(seed=0)
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    return Split(x, y.reshape(-1).to(torch.int64))  # labels: 1 benign, 0 malignant


def _model() -> nn.Module:
    return nn.Linear(30, 1)


def _loss(logit: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logit.reshape(-1), y.to(logit.dtype))


def _evaluate(model: nn.Module, data: Split, batch_size: int) -> EvalResult:
    with torch.inference_mode():
        logit = model(data.x).reshape(-1)
        loss = F.binary_cross_entropy_with_logits(logit, data.y.to(logit.dtype))
        accuracy = ((logit > 0).to(torch.int64) == data.y).double().mean()
    return EvalResult(loss=float(loss), accuracy=float(accuracy), num_samples=len(data))


def task():  # type: ignore[no-untyped-def]
    """A function may build the task: fedsim calls it once per process."""
    from fl.tasks import Task

    return Task(model=_model, data=_data, loss=_loss, evaluate=_evaluate)
