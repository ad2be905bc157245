"""Small synthetic datasets, models and rounds for fl tests: fast, and learnable by construction."""

from __future__ import annotations

import torch
from torch import nn

from fl.aggregation import ClientUpdate
from fl.data import Split


def separable_split(n: int = 200, seed: int = 0) -> Split:
    """Ten classes, each a fixed random 28×28 prototype plus small noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(10, 1, 28, 28, generator=g)
    y = torch.arange(n) % 10
    x = prototypes[y] + 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    return Split(x, y)


def tiny_round() -> tuple[dict[str, torch.Tensor], list[ClientUpdate]]:
    """Global w = [1, 1]; honest a trains to [2, 3], attacker b to [3, 1] (Δ_b = [2, 0])."""
    glob = {
        "w": torch.tensor([1.0, 1.0]),
        "h": torch.tensor([0.5], dtype=torch.float16),
        "n": torch.tensor(7),
    }
    a = {"w": torch.tensor([2.0, 3.0]), "h": torch.tensor([1.0], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, 1.0]), "h": torch.tensor([1.5], dtype=torch.float16)}
    updates = [
        ClientUpdate("a", {**a, "n": torch.tensor(7)}, num_samples=1, train_loss=0.1),
        ClientUpdate("b", {**b, "n": torch.tensor(7)}, num_samples=1, train_loss=0.2),
    ]
    return glob, updates


def small_cnn(seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 2, kernel_size=5, stride=4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * 6 * 6, 10),
        )
