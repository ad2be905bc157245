"""Small synthetic datasets for training tests: fast, and learnable by construction."""

from __future__ import annotations

import torch

from fl.data import Split


def separable_split(n: int = 200, seed: int = 0) -> Split:
    """Ten classes, each a fixed random 28×28 prototype plus small noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(10, 1, 28, 28, generator=g)
    y = torch.arange(n) % 10
    x = prototypes[y] + 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    return Split(x, y)
