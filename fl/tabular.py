"""Small tabular data sets that need no download: scikit-learn's wheel ships them.

Each comes back split into training and test rows by a seeded permutation,
standardized with the training rows' mean and deviation (what a data owner
does before sharing its features), as float32 tensors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["TabularSplit", "breast_cancer"]


class TabularSplit(NamedTuple):
    x_train: torch.Tensor  # (n, d)
    y_train: torch.Tensor  # (n, 1), 0. or 1.
    x_test: torch.Tensor
    y_test: torch.Tensor


def breast_cancer(seed: int = 0, test_fraction: float = 0.2) -> TabularSplit:
    """Wisconsin diagnostic breast cancer: 569 tumours, 30 features, benign (1) or not."""
    from sklearn.datasets import load_breast_cancer  # imported when used: sklearn is slow to import

    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.float32).reshape(-1, 1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    train = len(x) - round(test_fraction * len(x))
    mean, std = x[:train].mean(dim=0), x[:train].std(dim=0)
    x = (x - mean) / std
    return TabularSplit(x[:train], y[:train], x[train:], y[train:])
