"""Differential privacy for federated learning: configuration, clipping, noise, accounting.

Two granularities, chosen by :attr:`DPConfig.mode`:

- ``client``: DP-FedAvg of McMahan et al., *Learning Differentially Private
  Recurrent Language Models*, ICLR 2018. The server clips each client's model
  update Δ_c = state_c − global to L2 norm S, sums, adds N(0, (z·S)²·I) to the
  sum and divides by the cohort size m. Each round samples a cohort of exactly
  m = max(round(C·K), 1) of the K clients without replacement, so one round is
  one application of the Gaussian mechanism on a fixed-size sample, and a
  participant's whole dataset is protected (replace-one adjacency: K and m are
  public). The clip S can follow a target quantile of the update norms (Andrew
  et al., *Differentially Private Learning with Adaptive Clipping*, NeurIPS 2021).
- ``sample``: DP-SGD of Abadi et al., *Deep Learning with Differential
  Privacy*, CCS 2016, during local training (see :mod:`fl.dp_training`):
  per-sample gradients are clipped and noised, each step samples a Poisson batch,
  and a single training example is protected (add/remove adjacency).

Every random draw of a mechanism — noise, cohort, batch — comes from a
:class:`fl.noise.NoiseSource`: a CSPRNG unless the run asked for a reproducible
noise seed, in which case it is not private. Accounting
(:mod:`fl.accounting`, re-exported here) matches the sampling: Opacus's RDP
or PRV accountant for Poisson batches, the without-replacement RDP bound of
Wang, Balle, Kasiviswanathan 2019 for fixed-size cohorts. The arithmetic lives
in pure functions over float64 tensors; the :class:`DPFedAvg` strategy is a
thin policy layer over them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import torch

from fl.accounting import ACCOUNTANTS, BudgetExceeded, PrivacyAccountant, epsilon_after
from fl.aggregation import ClientUpdate, MeanFold, Strategy
from fl.errors import ConfigError
from fl.noise import NoiseSource, SecureNoise
from fl.updates import stack_updates, unstack_update

__all__ = [
    "ACCOUNTANTS",
    "DP_MODES",
    "BudgetExceeded",
    "DPConfig",
    "DPFedAvg",
    "PrivacyAccountant",
    "adaptive_clip_update",
    "check_budget",
    "clip_update",
    "clip_updates",
    "dp_mean",
    "epsilon_after",
    "gaussian_sum_noise",
]

DP_MODES: tuple[str, ...] = ("client", "sample")


def _positive(x: float) -> bool:
    # Written so that NaN and inf fail.
    return math.isfinite(x) and x > 0


@dataclass(frozen=True, kw_only=True)
class DPConfig:
    """What to protect and how much noise to add; crosses the worker protocol as :meth:`to_dict`.

    ``noise_multiplier`` z = 0 is accepted as the usual "clipping only" ablation:
    it gives no privacy (ε = ∞), so it cannot be combined with a target ε.
    ``adaptive_quantile`` γ turns on adaptive clipping (client mode only) with
    clip learning rate ``clip_lr`` η_C = 0.2, the value Andrew et al. use.
    """

    mode: Literal["client", "sample"]
    noise_multiplier: float
    clip: float
    delta: float = 1e-5
    target_epsilon: float | None = None
    adaptive_quantile: float | None = None
    clip_lr: float = 0.2
    accountant: Literal["rdp", "prv"] = "rdp"

    def __post_init__(self) -> None:
        if self.mode not in DP_MODES:
            raise ConfigError(f"dp mode must be one of {', '.join(DP_MODES)}, got {self.mode!r}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigError(f"dp noise multiplier must be >= 0, got {self.noise_multiplier}")
        if not _positive(self.clip):
            raise ConfigError(f"dp clip norm must be > 0, got {self.clip}")
        if not (0 < self.delta < 1):
            raise ConfigError(f"dp delta must be in (0, 1), got {self.delta}")
        if self.target_epsilon is not None:
            if not _positive(self.target_epsilon):
                raise ConfigError(f"dp target epsilon must be > 0, got {self.target_epsilon}")
            if self.noise_multiplier == 0:
                raise ConfigError("dp noise multiplier 0 gives ε = ∞: no target ε can be met")
        if self.adaptive_quantile is not None:
            if self.mode != "client":
                raise ConfigError("adaptive clipping needs dp mode 'client'")
            if not (0 < self.adaptive_quantile < 1):
                raise ConfigError(
                    f"adaptive clip quantile must be in (0, 1), got {self.adaptive_quantile}"
                )
        if not _positive(self.clip_lr):
            raise ConfigError(f"clip learning rate must be > 0, got {self.clip_lr}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}"
            )

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form for the wire."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> DPConfig:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ConfigError."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown dp config keys {unknown}: expected {sorted(known)}")
        try:
            return cls(**d)  # type: ignore[arg-type]
        except TypeError as exc:  # a required key is missing
            raise ConfigError(f"incomplete dp config {dict(d)!r}: {exc}") from None


# --- pure arithmetic ---------------------------------------------------------------------------


def clip_update(update: torch.Tensor, clip: float) -> torch.Tensor:
    """``update · min(1, S/‖update‖₂)``: the L2 projection onto the ball of radius S.

    Bounding every contribution's norm by S bounds the sensitivity of their sum,
    which is what lets Gaussian noise of std z·S make the sum private.
    """
    return clip_updates(update.unsqueeze(0), clip)[0][0]


def clip_updates(updates: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip each row of ``updates`` (n, d) to L2 norm ``clip``; returns (clipped, norms (n,))."""
    if updates.dim() != 2:
        raise ConfigError(f"updates must be (n, d), got shape {tuple(updates.shape)}")
    if not _positive(clip):
        raise ConfigError(f"clip norm must be > 0, got {clip}")
    norms = torch.linalg.vector_norm(updates, dim=1)
    # clamp_min avoids 0/0 for zero updates (whose factor is then 1 anyway).
    factors = (clip / norms.clamp_min(torch.finfo(norms.dtype).tiny)).clamp(max=1.0)
    return updates * factors.unsqueeze(1), norms


def gaussian_sum_noise(
    d: int, noise_multiplier: float, clip: float, noise: NoiseSource
) -> torch.Tensor:
    """N(0, (z·S)²·I_d) in float64: the Gaussian mechanism's noise for a sum of S-bounded terms.

    Drawn from ``noise``: a :class:`fl.noise.SecureNoise` (CSPRNG) unless the run
    chose a reproducible, non-private :class:`fl.noise.SeededNoise`.
    Floating-point attacks on the sampler are not ruled out (see :mod:`fl.noise`).
    """
    if d < 0 or not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ConfigError(f"need d >= 0 and noise multiplier >= 0, got {d} and {noise_multiplier}")
    return noise.normal(d, noise_multiplier * clip, torch.float64)


def dp_mean(
    updates: torch.Tensor, clip: float, noise_multiplier: float, noise: NoiseSource
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σᵢ clip(uᵢ, S) + N(0, (zS)²I)) / n for ``updates`` (n, d); returns (mean (d,), norms (n,)).

    The denominator is the public count n, not a data-dependent weight, so the
    mean's sensitivity is S/n and its noise std is z·S/n.
    """
    clipped, norms = clip_updates(updates, clip)
    total = clipped.sum(dim=0) + gaussian_sum_noise(updates.shape[1], noise_multiplier, clip, noise)
    return total / updates.shape[0], norms


def adaptive_clip_update(
    clip: float, fraction_below: float, target_quantile: float, lr: float
) -> float:
    """Andrew et al. 2021's geometric step: S ← S · exp(−η_C (b̄ − γ)).

    ``fraction_below`` b̄ is the fraction of this round's update norms ≤ S. If more
    than γ of the updates fit under S, S shrinks, else it grows, so S tracks the
    γ-quantile of the norms. The geometric (multiplicative) form adapts quickly
    across orders of magnitude and keeps S > 0.
    """
    if not (0 <= fraction_below <= 1 and 0 < target_quantile < 1):
        raise ConfigError(
            f"need fraction in [0, 1] and quantile in (0, 1), got {fraction_below}, "
            f"{target_quantile}"
        )
    return clip * math.exp(-lr * (fraction_below - target_quantile))


# --- the strategy ------------------------------------------------------------------------------


class DPFedAvg(Strategy):
    """DP-FedAvg (McMahan et al. 2018): clipped, noised, unweighted mean of client updates.

    McMahan et al. sample clients by Poisson sampling and divide by the
    *expected* total weight qW. Here :meth:`sample_clients` draws a cohort of
    exactly m = max(round(C·K), 1) clients without replacement, every update has
    weight 1 and the denominator is the number of updates n (= m unless workers
    drop out; dropping out is not data-dependent). Replacing one client moves
    the sum by at most 2S, so the privacy of a round is that of a Gaussian with
    σ = z/2 on a fixed-size sample, which :mod:`fl.accounting` accounts with
    ``sampling="fixed-size"`` (Wang, Balle, Kasiviswanathan 2019), not with a
    Poisson accountant. Sample-count weights are dropped because they would let
    one client's data size change the sensitivity.

    The cohort and the noise come from ``noise`` (a CSPRNG by default), not from
    the run's seeded sampler: a cohort anyone can recompute from the logged seed
    would give no amplification by sampling against that reader.

    With ``adaptive_quantile`` set, S follows Andrew et al. 2021 after each round.
    Simplification: the fraction b̄ is used without the noise Andrew et al. add to
    it, so the accountant does not cover the quantile estimate (it leaks a little
    about the norms); the noise on the update is not reduced to compensate either.

    With a fixed S a round may fold the updates as they arrive (:attr:`fold`):
    each is clipped around the global state (:func:`fl.updates.clip_to_reference`)
    and folded with weight 1, and :meth:`finish_mean` adds the noise to the
    mean — to a folded mean as to a securely opened one — so no (n, d) matrix is
    built. Adaptive clipping needs every norm: it does not fold.
    """

    name: ClassVar[str] = "dp-fedavg"

    def __init__(self, dp: DPConfig, *, noise: NoiseSource | None = None) -> None:
        if dp.mode != "client":
            raise ConfigError(f"DP-FedAvg needs dp mode 'client', got {dp.mode!r}")
        self.dp = dp
        self.clip = dp.clip
        self.fold = MeanFold(clip=dp.clip) if dp.adaptive_quantile is None else None
        self.noise = SecureNoise() if noise is None else noise
        self.last_clip: float | None = None
        self.last_norms: torch.Tensor | None = None

    def sample_clients(
        self, client_ids: Sequence[str], fraction: float, generator: torch.Generator
    ) -> list[str]:
        """m = max(round(C·K), 1) of the K clients without replacement, drawn from ``self.noise``.

        ``generator`` (the run's seeded sampler) is advanced as the base class
        does but does not choose the cohort. Returned in the order of ``client_ids``.
        """
        chosen = super().sample_clients(client_ids, fraction, generator)  # checks, advances
        picked = self.noise.choose(len(client_ids), len(chosen))
        return [client_ids[int(i)] for i in picked]

    def aggregate(
        self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        """global + dp_mean(Δ); non-floating tensors kept if all clients agree (as FedAvg)."""
        if not updates:
            raise ConfigError("DP-FedAvg needs at least one client update")
        for u in updates:
            if set(u.state) != set(global_state):
                diff = sorted(set(u.state) ^ set(global_state))
                raise ConfigError(f"client {u.client_id} state keys differ from the global: {diff}")
        first = updates[0].state
        for key, ref in global_state.items():
            if not ref.is_floating_point() and any(
                not torch.equal(u.state[key], first[key]) for u in updates
            ):
                raise ConfigError(f"non-floating tensor {key!r} differs between clients")
        keys, deltas = stack_updates(global_state, [u.state for u in updates])
        # A non-finite update (a diverged or hostile client) counts as no update:
        # zero is inside the clip ball, so the sensitivity and the denominator hold.
        deltas[~torch.isfinite(deltas).all(dim=1)] = 0.0
        mean, norms = dp_mean(deltas, self.clip, self.dp.noise_multiplier, self.noise)
        self.last_clip, self.last_norms = self.clip, norms
        result = unstack_update(global_state, keys, mean, updates[0].state)
        if self.dp.adaptive_quantile is not None:
            below = float((norms <= self.clip).double().mean())
            self.clip = adaptive_clip_update(
                self.clip, below, self.dp.adaptive_quantile, self.dp.clip_lr
            )
        return result

    def finish_mean(
        self, global_state: Mapping[str, torch.Tensor], mean: dict[str, torch.Tensor], count: int
    ) -> dict[str, torch.Tensor]:
        """The mean of ``count`` clipped updates plus N(0, (zS/count)²): the noise of
        :func:`dp_mean`, on a mean folded by the round or opened by secure aggregation."""
        if self.fold is None:
            raise ConfigError("DP-FedAvg with adaptive clipping needs every update: it cannot fold")
        keys, stacked = stack_updates(global_state, [mean])  # (1, d): the mean clipped update
        noise = gaussian_sum_noise(
            stacked.shape[1], self.dp.noise_multiplier, self.clip, self.noise
        )
        return unstack_update(global_state, keys, stacked[0] + noise / count, mean)


# --- accounting ------------------------------------------------------------------------------


def check_budget(
    accountant: PrivacyAccountant,
    dp: DPConfig,
    *,
    round_index: int,
    sample_rate: float,
    steps: int = 1,
) -> float:
    """Projected ε after round ``round_index``; BudgetExceeded if over ``dp.target_epsilon``.

    ``steps``/``sample_rate`` describe the round: 1 step at the client fraction for
    client-level DP; the local DP-SGD steps at batch/dataset size for sample level.
    """
    eps = accountant.projected_epsilon(dp.delta, dp.noise_multiplier, sample_rate, steps)
    if dp.target_epsilon is not None and eps > dp.target_epsilon:
        raise BudgetExceeded(round_index, eps, dp.target_epsilon, dp.delta)
    return eps
