"""A task on scikit-learn's handwritten digits: a small CNN on 8×8 images.

The data ships inside scikit-learn's wheel (1,797 images, UCI's "Optical
Recognition of Handwritten Digits"), so it needs no download. Run it at any
level, or with your own options:

    .venv/bin/fedsim run --task examples/digits_task.py:task --levels baseline,2,3,4
"""

from __future__ import annotations

import torch
from torch import nn

from fl.data import Split
from fl.tasks import Task

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the train/test cut: fixed, so every process cuts the same


def _digits(split: str) -> Split:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixels 0..16
    x = (x - 0.5) / 0.5
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    test = round(TEST_FRACTION * len(y))
    chosen = order[test:] if split == "train" else order[:test]
    return Split(x[chosen], y[chosen])


def _cnn() -> nn.Module:
    # (B,1,8,8) → conv3×3 → (B,16,8,8) → pool → (B,16,4,4) → conv3×3 → (B,32,4,4)
    # → pool → (B,32,2,2) → FC 128→10
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


task = Task(model=_cnn, data=_digits)
