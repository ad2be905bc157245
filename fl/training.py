"""Local training and evaluation — the one SGD loop every level shares.

The centralized baseline (level 0) and every federated worker call the same
:func:`train_local`, so the slowdown a level shows comes from its transport and
aggregation, never from a different training loop. The loop is therefore kept
lean: minibatches are gathered by indexing the in-memory tensors (no DataLoader,
no per-sample transforms), and the loss is accumulated as a tensor so that only
one ``.item()`` synchronisation happens per call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

from fl.data import Split
from fl.errors import ConfigError, DataError
from fl.noise import NoiseSource, SecureNoise, SeededNoise
from fl.updates import clip_to_reference

__all__ = [
    "EvalResult",
    "Loss",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "summed_loss",
    "train_local",
]

# A task's loss (fl.tasks.Task.loss): (model output, targets) → the batch's mean, as
# F.cross_entropy gives it.
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def summed_loss(loss: Loss, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The batch's summed loss: what evaluation accumulates and DP-SGD differentiates.

    Cross-entropy is asked for its sum directly (the bits fedsim always had); any
    other loss gives its mean, times the batch's size (an empty batch sums to 0).
    """
    if loss is F.cross_entropy:
        return F.cross_entropy(output, target, reduction="sum")
    if target.shape[0] == 0:
        return output.sum() * 0.0
    return loss(output, target) * target.shape[0]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyper-parameters of local SGD; crosses the worker protocol as :meth:`to_dict`."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    # Client-level DP (DP-FedAvg, fl.privacy): after training, the round's update
    # (trained − start) is projected onto the L2 ball of this radius, on the worker,
    # before it is sent or secret-shared. 0 = off.
    update_clip: float = 0.0
    # Sample-level DP (DP-SGD with Opacus, fl.dp_training): per-sample clip norm S
    # and noise multiplier z. dp_clip 0 = plain SGD.
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    # DP-SGD's randomness (fl.noise): -1 = a CSPRNG (private); a seed >= 0 mixed
    # with the call's generator = reproducible, NOT private (--dp-noise-seed).
    dp_noise_seed: int = -1
    # FedProx (Li et al., MLSys 2020): the local objective gains (μ/2)·‖w − w_t‖²,
    # w_t the round's starting model; set by the strategy (fl.fedprox). 0 = off.
    prox_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        # Written as `not (ok)` so that NaN fails too.
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not (0 <= self.momentum < 1):
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay}")
        for name in ("update_clip", "dp_clip", "dp_noise", "prox_mu"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be finite and >= 0, got {value}")
        if self.prox_mu > 0 and self.dp_clip > 0:
            raise ConfigError(
                "FedProx's proximal term and DP-SGD do not combine (clip its gradient?)"
            )
        if not -1 <= self.dp_noise_seed < 2**63:
            raise ConfigError(
                f"dp_noise_seed must be -1 or in [0, 2**63), got {self.dp_noise_seed}"
            )

    def to_dict(self) -> dict[str, float | int]:
        """JSON-safe form for the wire."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys or wrong types raise ConfigError."""
        # Field types are strings under `from __future__ import annotations`.
        kinds = {f.name: str(getattr(f.type, "__name__", f.type)) for f in fields(cls)}
        unknown = sorted(set(d) - set(kinds))
        if unknown:
            raise ConfigError(f"unknown train config keys {unknown}: expected {sorted(kinds)}")
        values: dict[str, float | int] = {}
        for key, value in d.items():
            # bool is an int subclass but never a valid count or rate here.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"train config {key!r} must be a number, got {value!r}")
            if kinds[key] == "int":
                if not isinstance(value, int):
                    raise ConfigError(f"train config {key!r} must be an integer, got {value!r}")
                values[key] = value
            else:
                values[key] = float(value)
        try:
            return cls(**values)  # type: ignore[arg-type]
        except TypeError as exc:  # a required key is missing
            raise ConfigError(f"incomplete train config {dict(d)!r}: {exc}") from None


@dataclass(frozen=True)
class TrainResult:
    """What one :func:`train_local` call did; ``mean_loss`` is sample-weighted over all passes."""

    num_samples: int
    steps: int
    mean_loss: float
    seconds: float


@dataclass(frozen=True)
class EvalResult:
    """Mean loss and top-1 accuracy over ``num_samples`` samples."""

    loss: float
    accuracy: float
    num_samples: int


def train_local(
    model: nn.Module,
    data: Split,
    config: TrainConfig,
    generator: torch.Generator,
    *,
    loss: Loss = F.cross_entropy,
) -> TrainResult:
    """Plain minibatch SGD on ``loss`` for ``config.epochs`` passes over ``data``.

    ``loss`` is the task's (cross-entropy unless it gives its own).

    Each pass visits ``torch.randperm(len(data), generator=generator)`` in batches
    of ``config.batch_size`` (the last one partial). The optimizer is fresh per
    call, so momentum does not carry over between federated rounds — the usual
    FedAvg client. Same weights + data + config + generator state → bitwise
    identical weights on CPU. With ``dp_clip`` the loop is DP-SGD instead
    (:mod:`fl.dp_training`), whose batches and noise come from a CSPRNG — not
    from ``generator`` — unless ``dp_noise_seed`` asks for reproducible, non-private
    noise; with ``update_clip`` the update is clipped after.
    """
    n = len(data)
    if n == 0:
        raise DataError("cannot train on an empty dataset")
    return with_update_clip(
        model, config, lambda: _sgd_or_dp_sgd(model, data, config, generator, loss)
    )


def with_update_clip(
    model: nn.Module, config: TrainConfig, train: Callable[[], TrainResult]
) -> TrainResult:
    """``train()`` (which trains ``model`` in place), then, with ``config.update_clip``,
    the model's move projected onto the L2 ball of that radius (client-level DP)."""
    start_state = _floating_copy(model) if config.update_clip > 0 else None
    result = train()
    if start_state is not None:
        _clip_model_update(model, start_state, config.update_clip)
    return result


def _sgd_or_dp_sgd(
    model: nn.Module, data: Split, config: TrainConfig, generator: torch.Generator, loss: Loss
) -> TrainResult:
    if config.dp_clip > 0:
        from fl.dp_training import train_local_dp  # Opacus is only loaded when used
        from fl.privacy import DPConfig, PrivacyAccountant

        dp = DPConfig(mode="sample", noise_multiplier=config.dp_noise, clip=config.dp_clip)
        noise = _dp_noise(config, generator)
        # The coordinator accounts for every client from public sizes (flows.defence).
        return train_local_dp(model, data, config, dp, noise, PrivacyAccountant(), loss=loss)
    return _train_sgd(model, data, config, generator, loss)


def _dp_noise(config: TrainConfig, generator: torch.Generator) -> NoiseSource:
    """DP-SGD's randomness: a CSPRNG, or (``dp_noise_seed`` >= 0) a seed mixed with this call's."""
    if config.dp_noise_seed < 0:
        return SecureNoise()
    salt = int(torch.randint(2**62, (1,), generator=generator))  # differs per client and round
    return SeededNoise((config.dp_noise_seed * 1_000_003 + salt) % 2**63)


def _floating_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: t.detach().clone() for k, t in model.state_dict().items() if t.is_floating_point()}


def _clip_model_update(model: nn.Module, start: dict[str, torch.Tensor], clip: float) -> None:
    """Project the model's move away from ``start`` onto the L2 ball of radius ``clip``
    (:func:`fl.updates.clip_to_reference`: a move that is not finite becomes none)."""
    current = model.state_dict()
    clipped = clip_to_reference(current, start, clip)
    if clipped is None:
        return
    with torch.no_grad():
        for key in start:
            current[key].copy_(clipped[key])


def _train_sgd(
    model: nn.Module, data: Split, config: TrainConfig, generator: torch.Generator, loss_fn: Loss
) -> TrainResult:
    n = len(data)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    was_training = model.training
    model.train()
    # FedProx: ∇(μ/2)·‖w − w_t‖² = μ·(w − w_t), added to each gradient before the step.
    anchor = [p.detach().clone() for p in model.parameters()] if config.prox_mu > 0 else None
    loss_sum = torch.zeros((), dtype=torch.float64)
    steps = 0
    start = time.perf_counter()
    try:
        for _ in range(config.epochs):
            for batch in torch.split(torch.randperm(n, generator=generator), config.batch_size):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(data.x[batch]), data.y[batch])
                loss.backward()  # type: ignore[no-untyped-call]
                if anchor is not None:
                    with torch.no_grad():
                        for param, start_value in zip(model.parameters(), anchor, strict=True):
                            if param.grad is not None:
                                param.grad.add_(param - start_value, alpha=config.prox_mu)
                optimizer.step()
                loss_sum += loss.detach() * batch.numel()
                steps += 1
        mean_loss = loss_sum.item() / (n * config.epochs)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    return TrainResult(num_samples=n, steps=steps, mean_loss=mean_loss, seconds=seconds)


def evaluate(
    model: nn.Module, data: Split, *, batch_size: int = 1000, loss: Loss = F.cross_entropy
) -> EvalResult:
    """Mean ``loss`` and top-1 accuracy of ``model`` on ``data``, in eval mode, no autograd."""
    n = len(data)
    if n == 0:
        raise DataError("cannot evaluate on an empty dataset")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                x, y = data.x[start : start + batch_size], data.y[start : start + batch_size]
                logits = model(x)
                loss_sum += summed_loss(loss, logits, y).double()
                correct += (logits.argmax(dim=1) == y).sum()
    finally:
        model.train(was_training)
    return EvalResult(loss=loss_sum.item() / n, accuracy=correct.item() / n, num_samples=n)
