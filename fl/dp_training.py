"""Sample-level DP-SGD local training with Opacus (Abadi et al. 2016).

DP-SGD (Abadi et al., *Deep Learning with Differential Privacy*, CCS 2016)
changes three things in :func:`fl.training.train_local`'s loop:

1. batches are *Poisson* samples (each example joins with probability
   q = batch_size / N) instead of a shuffled partition — the sampled Gaussian
   mechanism that the RDP/PRV accountants analyse assumes exactly this;
2. every example's gradient is clipped to L2 norm S (Opacus's
   ``GradSampleModule`` computes per-sample gradients with backward hooks);
3. N(0, (z·S)²) noise is added to the sum of clipped gradients, which is then
   divided by the *expected* batch size q·N (a data-independent denominator).

Each optimizer step is one mechanism application recorded in the
:class:`fl.privacy.PrivacyAccountant` at sample rate q, which Opacus's RDP/PRV
accountants analyse as Poisson sampling (add/remove adjacency) — the batches
really are Poisson (:func:`poisson_batches`, the same rule as Opacus's
``UniformWithReplacementSampler``, empty batches included). Opacus's
``GradSampleModule`` and ``DPOptimizer`` do the per-sample clip; the Poisson
masks and the Gaussian noise come from a :class:`fl.noise.NoiseSource` (a
CSPRNG unless a reproducible noise seed was asked for), the noise in one bulk
draw per step for all parameters. We keep fedsim's lean in-memory batching
instead of a DataLoader.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from fl.data import Split
from fl.errors import ConfigError, DataError
from fl.noise import NoiseSource
from fl.privacy import DPConfig, PrivacyAccountant
from fl.training import Loss, TrainConfig, TrainResult, summed_loss

if TYPE_CHECKING:  # Opacus is a heavy import: made when DP-SGD runs, not before
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

__all__ = ["dp_sample_rate", "dp_steps_per_epoch", "poisson_batches", "train_local_dp"]

# Attributes Opacus hangs on parameters while attached; removed afterwards so the
# model leaves train_local_dp as it came in (same state_dict keys, no hooks).
_OPACUS_PARAM_ATTRS = ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample")


def dp_sample_rate(batch_size: int, num_samples: int) -> float:
    """Poisson sampling rate q = batch_size / N (capped at 1): the accountant's sample rate."""
    if num_samples < 1:
        raise DataError("cannot train on an empty dataset")
    return min(1.0, batch_size / num_samples)


def dp_steps_per_epoch(batch_size: int, num_samples: int) -> int:
    """Optimizer steps per "epoch": ⌊1/q⌋, so that an epoch draws N examples in expectation.

    Same convention as Opacus's ``UniformWithReplacementSampler``; with Poisson
    sampling an epoch is a number of steps, not a pass over every example.
    """
    return max(1, int(1 / dp_sample_rate(batch_size, num_samples)))


def poisson_batches(n: int, rate: float, steps: int, noise: NoiseSource) -> Iterator[torch.Tensor]:
    """``steps`` batches of ``range(n)``, each index in each independently with prob. ``rate``.

    The sampling the accountant's Poisson analysis assumes; a batch may be empty.
    """
    for _ in range(steps):
        yield torch.nonzero(noise.poisson_mask(n, rate)).flatten()


def _dp_optimizer(noise: NoiseSource, **kwargs: Any) -> DPOptimizer:
    """Opacus's DPOptimizer, its noise drawn from ``noise`` in one draw for all parameters."""
    from opacus.optimizers import DPOptimizer
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class _Optimizer(DPOptimizer):  # type: ignore[misc]  # Opacus is untyped
        def add_noise(self) -> None:
            grads = [p.summed_grad for p in self.params]
            _check_processed_flag(grads)
            std = self.noise_multiplier * self.max_grad_norm
            sizes = [g.numel() for g in grads]
            flat = noise.normal(sum(sizes), std, grads[0].dtype)
            chunks = torch.split(flat, sizes)
            for p, chunk in zip(self.params, chunks, strict=True):
                p.grad = (p.summed_grad + chunk.view_as(p.summed_grad)).view_as(p)
            _mark_as_processed(grads)

    return _Optimizer(**kwargs)


def _detach_opacus(wrapped: GradSampleModule, model: nn.Module) -> None:
    """Remove Opacus's hooks and per-parameter attributes from ``model``."""
    wrapped.remove_hooks()
    for p in model.parameters():
        for attr in _OPACUS_PARAM_ATTRS:
            if hasattr(p, attr):
                delattr(p, attr)


def train_local_dp(
    model: nn.Module,
    data: Split,
    config: TrainConfig,
    dp: DPConfig,
    noise: NoiseSource,
    accountant: PrivacyAccountant,
    *,
    loss: Loss = F.cross_entropy,
) -> TrainResult:
    """DP-SGD for ``config.epochs`` × ⌊1/q⌋ steps on ``data``; records each step in ``accountant``.

    ``model`` is trained in place and keeps its own parameters and state_dict
    keys: Opacus's wrapper only borrows it and is detached before returning.
    ``noise`` draws both the Poisson batches and the Gaussian noise: with a
    :class:`fl.noise.SecureNoise` neither can be recomputed by anyone; a
    :class:`fl.noise.SeededNoise` makes the run reproducible on CPU and not
    private. Opacus's ``secure_mode`` is not used (it needs the unmaintained
    torchcsprng); floating-point attacks on the sampler are not ruled out.
    ``mean_loss`` is the mean loss over the examples the batches drew.
    """
    from opacus import GradSampleModule

    if dp.mode != "sample":
        raise ConfigError(f"DP-SGD local training needs dp mode 'sample', got {dp.mode!r}")
    n = len(data)
    q = dp_sample_rate(config.batch_size, n)
    steps_per_epoch = dp_steps_per_epoch(config.batch_size, n)
    # loss_reduction="sum" gives the raw per-example gradients (no rescaling by the
    # batch size); the optimizer then divides Σ clipped + noise by q·N.
    wrapped = GradSampleModule(model, loss_reduction="sum")
    optimizer = _dp_optimizer(
        noise,
        optimizer=torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        ),
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.clip,
        expected_batch_size=q * n,
        loss_reduction="mean",
    )
    optimizer.attach_step_hook(
        lambda opt: accountant.step(opt.noise_multiplier, q)  # only steps actually taken
    )
    batches = poisson_batches(n, q, config.epochs * steps_per_epoch, noise)
    was_training = model.training
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64)
    drawn = steps = 0
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # Opacus's backward hooks fire on module outputs because the images do
            # not require grad; PyTorch warns about that on every step.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for batch in batches:
                optimizer.zero_grad(set_to_none=True)
                batch_loss = summed_loss(loss, wrapped(data.x[batch]), data.y[batch])
                batch_loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                loss_sum += batch_loss.detach()
                drawn += batch.numel()
                steps += 1
    finally:
        _detach_opacus(wrapped, model)
        model.train(was_training)
    mean_loss = loss_sum.item() / drawn if drawn else math.nan
    seconds = time.perf_counter() - start
    return TrainResult(num_samples=n, steps=steps, mean_loss=mean_loss, seconds=seconds)
