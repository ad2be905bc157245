"""Privacy accounting for the two ways fedsim samples: Poisson batches and fixed-size cohorts.

An accountant's ε is only valid for the sampling the mechanism actually used:

- ``poisson`` — DP-SGD (:mod:`fl.dp_training`) puts each example in a batch
  independently with probability q. Opacus's RDP (Mironov 2017; Mironov, Talwar,
  Zhang 2019) or PRV (Gopi et al. 2021) accountant analyses exactly this, under
  add/remove-one adjacency.
- ``fixed-size`` — DP-FedAvg (:class:`fl.privacy.DPFedAvg`) draws a cohort of
  exactly m of the K clients without replacement and divides by m. Poisson
  analyses do not apply to it. The accountant uses the RDP bound for
  sampling without replacement of Wang, Balle and Kasiviswanathan,
  *Subsampled Rényi Differential Privacy and Analytical Moments Accountant*,
  AISTATS 2019, Theorem 9, under replace-one adjacency (K is public). Replacing
  one client moves the sum of S-clipped updates by up to 2S, so the base
  Gaussian mechanism with noise std z·S has ε(α) = α/(2σ²) with σ = z/2. Its
  ε is therefore *not* comparable one-to-one with a Poisson ε at the same z.

Both assume the sampling is secret from whoever the guarantee is against
(:mod:`fl.noise`). RDP is converted to (ε, δ) with Opacus's
``get_privacy_spent`` (Balle et al. 2020, Theorem 21).
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from typing import TYPE_CHECKING, Literal

from fl.errors import ConfigError, FedsimError

if TYPE_CHECKING:  # Opacus is a heavy import: only runs that use DP make it
    from opacus.accountants import IAccountant

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "SAMPLINGS",
    "BudgetExceeded",
    "PrivacyAccountant",
    "epsilon_after",
    "fixed_size_gaussian_rdp",
]

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")
SAMPLINGS: tuple[str, ...] = ("poisson", "fixed-size")
# Theorem 9 holds for integer α ≥ 2; below 2 the bound at α = 2 is used (RDP grows
# with α), except at q = 1 where the Gaussian's own ε(α) holds for every α > 1.
RDP_ORDERS: tuple[float, ...] = (1.25, 1.5, 1.75, *range(2, 65), 80, 96, 128, 160, 192, 256)


class BudgetExceeded(FedsimError):
    """The next round would spend more privacy than ``--dp-target-epsilon`` allows."""

    def __init__(self, round_index: int, epsilon: float, target: float, delta: float) -> None:
        self.round_index, self.epsilon, self.target, self.delta = (
            round_index,
            epsilon,
            target,
            delta,
        )
        super().__init__(
            f"privacy budget: round {round_index} would reach ε={epsilon:.3g} > target "
            f"{target:g} at δ={delta:g}; stopping after round {round_index - 1}"
        )


def _check_step(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ConfigError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    if not (0 < sample_rate <= 1):
        raise ConfigError(f"sample rate must be in (0, 1], got {sample_rate}")
    if steps < 0:
        raise ConfigError(f"steps must be >= 0, got {steps}")


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


@functools.lru_cache(maxsize=64)
def fixed_size_gaussian_rdp(q: float, sigma: float) -> tuple[float, ...]:
    """RDP at :data:`RDP_ORDERS` of a Gaussian (σ × sensitivity) on a sample without replacement.

    Wang, Balle, Kasiviswanathan 2019, Theorem 9, with ε(∞) = ∞ for the
    Gaussian: for integer α ≥ 2 and γ = m/n,

        ε'(α) ≤ 1/(α−1) · log(1 + γ²·C(α,2)·min(4(e^{ε(2)} − 1), 2e^{ε(2)})
                              + Σ_{j=3..α} 2·γʲ·C(α,j)·e^{(j−1)ε(j)}),

    ε(j) = j/(2σ²); capped by ε(α) itself (sampling never hurts).
    """
    if not (0 < q <= 1) or not sigma > 0:
        raise ConfigError(f"need q in (0, 1] and sigma > 0, got {q} and {sigma}")

    def eps(j: float) -> float:
        return j / (2 * sigma**2)

    rdp: list[float] = []
    for order in RDP_ORDERS:
        if q == 1:
            rdp.append(eps(order))
            continue
        if order < 2:
            rdp.append(math.nan)  # filled in from α = 2 below
            continue
        alpha = int(order)
        e2 = eps(2)
        second = min(math.log(4) + e2 + math.log(-math.expm1(-e2)), math.log(2) + e2)
        log_a = _log_add(0.0, 2 * math.log(q) + _log_comb(alpha, 2) + second)
        for j in range(3, alpha + 1):
            term = math.log(2) + j * math.log(q) + _log_comb(alpha, j) + (j - 1) * eps(j)
            log_a = _log_add(log_a, term)
        rdp.append(min(log_a / (alpha - 1), eps(alpha)))
    at_two = rdp[RDP_ORDERS.index(2)]
    return tuple(at_two if math.isnan(r) else r for r in rdp)


class PrivacyAccountant:
    """ε of a sequence of sampled Gaussian mechanisms, for the sampling they used.

    One ``step`` is one application: a DP-SGD optimizer step (``poisson``,
    sample rate = expected batch / dataset size; Opacus's ``rdp`` or ``prv``),
    or a DP-FedAvg round (``fixed-size``, sample rate = m/K; RDP of sampling
    without replacement, see the module docstring; ``prv`` is refused).
    """

    def __init__(
        self,
        mechanism: str = "rdp",
        *,
        sampling: Literal["poisson", "fixed-size"] = "poisson",
    ) -> None:
        if mechanism not in ACCOUNTANTS:
            raise ConfigError(
                f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {mechanism!r}"
            )
        if sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        if sampling == "fixed-size" and mechanism != "rdp":
            raise ConfigError(
                "the PRV accountant analyses Poisson sampling only; a fixed-size cohort "
                "needs the rdp accountant"
            )
        self.mechanism, self.sampling = mechanism, sampling
        self.opacus: IAccountant | None = None
        self._fixed: list[tuple[float, float, int]] = []
        if sampling == "poisson":
            from opacus.accountants import create_accountant

            self.opacus = create_accountant(mechanism)

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """(noise multiplier, sample rate, steps) of every recorded application."""
        if self.opacus is not None:
            return [(float(z), float(q), int(n)) for z, q, n in self.opacus.history]
        return list(self._fixed)

    @property
    def steps(self) -> int:
        """Total mechanism applications recorded."""
        return sum(n for _, _, n in self.history)

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` applications at noise z and sampling rate q."""
        _check_step(noise_multiplier, sample_rate, steps)
        if self.opacus is None:
            if steps:
                self._fixed.append((noise_multiplier, sample_rate, steps))
            return
        for _ in range(steps):
            self.opacus.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)

    def epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta`` (0 before any step, ∞ once z = 0 was used)."""
        history = self.history
        if not history:
            return 0.0
        if any(z == 0 for z, _, _ in history):
            return math.inf  # Opacus's PRV accountant cannot represent z = 0
        if self.opacus is not None:
            return float(self.opacus.get_epsilon(delta=delta))
        from opacus.accountants.analysis.rdp import get_privacy_spent

        total = [0.0] * len(RDP_ORDERS)
        for z, q, n in history:
            # Replace-one moves an S-clipped sum by 2S: σ = z·S / 2S.
            for i, r in enumerate(fixed_size_gaussian_rdp(q, z / 2)):
                total[i] += n * r
        with warnings.catch_warnings():  # "optimal order is the smallest alpha": a hint
            warnings.simplefilter("ignore", UserWarning)
            eps, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=total, delta=delta)
        return float(eps)

    def projected_epsilon(
        self, delta: float, noise_multiplier: float, sample_rate: float, steps: int = 1
    ) -> float:
        """ε after ``steps`` more applications, computed on a copy: this accountant is unchanged."""
        trial = copy.deepcopy(self)
        trial.step(noise_multiplier, sample_rate, steps)
        return trial.epsilon(delta)

    def would_exceed(
        self,
        target_epsilon: float,
        delta: float,
        noise_multiplier: float,
        sample_rate: float,
        steps: int = 1,
    ) -> bool:
        """True if ``steps`` more applications would push ε above ``target_epsilon``."""
        return self.projected_epsilon(delta, noise_multiplier, sample_rate, steps) > target_epsilon


def epsilon_after(
    steps: int,
    noise_multiplier: float,
    sample_rate: float,
    delta: float,
    *,
    mechanism: str = "rdp",
    sampling: Literal["poisson", "fixed-size"] = "poisson",
) -> float:
    """ε after ``steps`` identical applications (rounds or DP-SGD steps), for planning tables."""
    accountant = PrivacyAccountant(mechanism, sampling=sampling)
    accountant.step(noise_multiplier, sample_rate, steps)
    return accountant.epsilon(delta)
