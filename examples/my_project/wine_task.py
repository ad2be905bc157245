"""A task as a user writes it in their own project: wine cultivars with a small MLP.

Nothing here is fedsim's but the ``Task`` it returns: the data (scikit-learn's
wine set, 178 wines, 13 chemical measurements, 3 cultivars), its cut and its
scaling, the model, and a loss with label smoothing. From the project's folder:

    fedsim run --task wine_task:task --levels baseline,3,4 --workers 3
"""

from __future__ import annotations

import hashlib
from functools import partial

import numpy as np
import torch
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F

from fl.data import Split
from fl.tasks import Task


def _tensors() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    x, y = load_wine(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=7, stratify=y
    )
    scaler = StandardScaler().fit(x_train)
    return {
        "train": (scaler.transform(x_train), y_train),
        "test": (scaler.transform(x_test), y_test),
    }


def load(split: str) -> Split:
    x, y = _tensors()[split]
    return Split(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64))


def digest() -> str:
    """Names the data: both splits' bytes (cheap here; a big set would hash its files)."""
    h = hashlib.sha256()
    for x, y in _tensors().values():
        h.update(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


class WineMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(13, 32)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x)))


task = Task(
    model=WineMLP,
    data=load,
    loss=partial(F.cross_entropy, label_smoothing=0.05),
    digest=digest,
)
