"""The models fedsim trains, a name → constructor registry, and state-dict helpers.

- ``cnn``: the "CNN" of McMahan et al., *Communication-Efficient Learning of
  Deep Networks from Decentralized Data*, AISTATS 2017 (≈ 1.66 M parameters).
- ``mlp``: the same paper's "2NN" (two hidden layers of 200 units).
- ``mpc-cnn``: a smaller CNN whose every layer is cheap under additive secret
  sharing — average pooling (linear) instead of max pooling (needs secure
  comparisons), and a degree-2 polynomial activation instead of ReLU (one Beaver
  multiplication), as CryptoNets did (Gilad-Bachrach et al., *CryptoNets:
  Applying Neural Networks to Encrypted Data with High Throughput and
  Accuracy*, ICML 2016).

Model state crosses worker boundaries as ``dict[str, Tensor]`` (never a pickled
module), so :func:`get_state` / :func:`set_state` are the only way the rest of
fedsim reads or writes weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from fl.errors import ConfigError, DataError

__all__ = [
    "MLP2NN",
    "MODELS",
    "MPCFriendlyCNN",
    "McMahanCNN",
    "PolyActivation",
    "adopt_state",
    "build_model",
    "get_state",
    "set_state",
]


class McMahanCNN(nn.Module):
    """McMahan et al. 2017's CNN for 28×28 grey images.

    Shapes: (B,1,28,28) → conv5×5 (pad 2) → (B,32,28,28) → pool → (B,32,14,14)
    → conv5×5 (pad 2) → (B,64,14,14) → pool → (B,64,7,7) → FC 3136→512 → FC 512→10.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 7 * 7, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)  # type: ignore[no-any-return]


class MLP2NN(nn.Module):
    """McMahan et al. 2017's "2NN": 784 → 200 → 200 → 10 with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 200)
        self.fc2 = nn.Linear(200, 200)
        self.fc3 = nn.Linear(200, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)  # type: ignore[no-any-return]


class PolyActivation(nn.Module):
    """``a·x² + b·x + c`` with fixed coefficients — the MPC-friendly stand-in for ReLU.

    A pure square (CryptoNets' choice) makes activations grow quadratically per
    layer: with SGD at lr 0.05 the MPC-friendly CNN below diverged to NaN in its
    first epoch on Fashion-MNIST. The scaled polynomial 0.125x² + 0.5x + 0.25 is
    close to ReLU on [-2, 2] (where normalized pre-activations mostly fall), keeps
    a linear term for gradient flow, and reached 82 % test accuracy after 3 epochs
    on 12,000 samples (B=32, lr 0.05). Coefficients are plain attributes so that
    MPC inference can evaluate the same polynomial on shares (one Beaver
    multiplication for x², the rest is public scaling).
    """

    def __init__(self, a: float = 0.125, b: float = 0.5, c: float = 0.25) -> None:
        super().__init__()
        self.a, self.b, self.c = a, b, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x * x + self.b * x + self.c

    def extra_repr(self) -> str:
        return f"a={self.a}, b={self.b}, c={self.c}"


class MPCFriendlyCNN(nn.Module):
    """A CNN built only from operations cheap on secret shares.

    Shapes: (B,1,28,28) → conv5×5 (pad 2) → (B,16,28,28) → avgpool → (B,16,14,14)
    → conv5×5 (pad 2) → (B,32,14,14) → avgpool → (B,32,7,7) → FC 1568→128 → FC 128→10.
    Widths are half of McMahan's CNN (and FC 128 instead of 512): matmuls in the
    ring are far slower than float32 (docs/mpc-and-he.md, "Encrypted evaluation"),
    and the narrower net still reaches > 80 % on Fashion-MNIST within a few epochs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5, padding=2)
        self.pool = nn.AvgPool2d(2)
        self.act = PolyActivation()
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = self.act(self.fc1(x.flatten(1)))
        return self.fc2(x)  # type: ignore[no-any-return]


MODELS: dict[str, Callable[[], nn.Module]] = {
    "cnn": McMahanCNN,
    "mlp": MLP2NN,
    "mpc-cnn": MPCFriendlyCNN,
}


def build_model(name: str, *, seed: int | None = None) -> nn.Module:
    """A fresh model; with ``seed`` its init is deterministic and the global RNG is untouched."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}") from None
    if seed is None:
        return factory()
    # torch layers draw their init from the global RNG; fork it so callers'
    # random state is the same before and after.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def get_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous copies of the model's parameters and buffers, in model order."""
    return {
        key: value.detach().clone(memory_format=torch.contiguous_format)
        for key, value in model.state_dict().items()
    }


def _check_fits(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's own state dict, after checking ``state`` has exactly its keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise DataError(f"state does not fit model: missing {missing}, unexpected {unexpected}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise DataError(
                f"state {key!r} has shape {tuple(state[key].shape)}, "
                f"model expects {tuple(value.shape)}"
            )
    return expected


def set_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model``; keys and shapes must match exactly (else DataError)."""
    _check_fits(model, state)
    model.load_state_dict(dict(state), strict=True)


def adopt_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, take: bool) -> None:
    """Make ``state``'s tensors the model's own (``load_state_dict(assign=True)``).

    With ``take`` the model keeps the given tensors themselves where they are
    contiguous and of the model's dtype — no copy; the caller gives them up and
    must hold no other reference that it will use. Otherwise it gets fresh copies
    (one copy, as :func:`set_state`). Either way the tensors the model held before
    are left alone: whoever still holds them keeps them unchanged. Keys and
    shapes must match exactly (else DataError).
    """
    expected = _check_fits(model, state)
    own = {}
    for key, ref in expected.items():
        tensor = state[key].detach()
        if not (take and tensor.dtype == ref.dtype and tensor.is_contiguous()):
            tensor = tensor.to(ref.dtype, memory_format=torch.contiguous_format, copy=True)
        own[key] = tensor
    # What load_state_dict(assign=True) does, without its per-call Python
    # machinery (hooks, dynamo guards), which would be paid per simulated client.
    for key, tensor in own.items():
        owner_name, _, name = key.rpartition(".")
        owner = model.get_submodule(owner_name)
        current = getattr(owner, name)
        if isinstance(current, nn.Parameter):
            setattr(owner, name, nn.Parameter(tensor, requires_grad=current.requires_grad))
        else:
            setattr(owner, name, tensor)  # a registered buffer stays registered
