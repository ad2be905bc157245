"""Byzantine-robust aggregation and per-round detection of suspicious clients.

FedAvg's mean has breakdown point 0: one client sending a huge update moves the
global model arbitrarily far. The aggregators here tolerate a minority of
arbitrary (Byzantine) updates:

- coordinate-wise median and trimmed mean: Yin, Chen, Ramchandran, Bartlett,
  *Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates*,
  ICML 2018;
- Krum and Multi-Krum: Blanchard, El Mhamdi, Guerraoui, Stainer, *Machine
  Learning with Adversaries: Byzantine Tolerant Gradient Descent*, NeurIPS 2017.

As in :mod:`fl.aggregation`, the arithmetic lives in pure, deterministic
functions over a stacked ``(n_clients, d)`` float64 matrix of updates; the
:class:`Strategy` subclasses only flatten client states relative to the global
state, call them, and unflatten the result.

Robust aggregators are unweighted: weights are the clients' self-reported sample
counts, so an attacker could claim a huge count and dominate any weighted rule.

Detection (:mod:`fl.detection`): after each ``aggregate`` every strategy here
leaves a :class:`~fl.detection.RobustReport` in ``last_report``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import torch

from fl.aggregation import ClientUpdate, FedAvg, Strategy
from fl.detection import DEFAULT_THRESHOLD, RobustReport, check_threshold, flag, suspicion_scores
from fl.errors import ConfigError
from fl.updates import floating_keys, stack_updates, unstack_update

__all__ = [
    "ACCEPTED_SPECS",
    "Krum",
    "Median",
    "MultiKrum",
    "ScoredFedAvg",
    "ScoredStrategy",
    "TrimmedMean",
    "coordinate_median",
    "krum",
    "krum_scores",
    "multi_krum",
    "parse_aggregator",
    "trimmed_mean",
]

ACCEPTED_SPECS = "fedavg, median, trimmed-mean:BETA, krum:F, multi-krum:F:M"
_F64 = torch.float64

# --------------------------------------------------------------------------- pure functions


def _check_matrix(updates: torch.Tensor) -> torch.Tensor:
    """Validate a stacked (n >= 1, d) floating matrix of finite updates; return it as float64."""
    if updates.dim() != 2 or updates.shape[0] == 0 or not updates.is_floating_point():
        raise ConfigError(
            f"updates must be a floating (n >= 1, d) matrix, "
            f"got {tuple(updates.shape)} {updates.dtype}"
        )
    bad = (~torch.isfinite(updates)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise ConfigError(f"update rows {bad} are not finite")
    return updates.to(_F64)


def coordinate_median(updates: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median (Yin et al. 2018): (n, d) -> (d,).

    For even n each coordinate is the mean of its two middle values, as
    ``numpy.median`` does; ``torch.median`` would return the lower one, biasing
    the aggregate toward smaller values.
    """
    x = _check_matrix(updates)
    s = x.sort(dim=0).values  # (n, d), each column ascending
    n = s.shape[0]
    if n % 2 == 1:
        return s[n // 2].clone()
    return (s[n // 2 - 1] + s[n // 2]) / 2


def _check_beta(beta: float) -> float:
    if not (0 <= beta < 0.5):  # also rejects NaN
        raise ConfigError(f"trimmed-mean beta must be in [0, 0.5), got {beta}")
    return float(beta)


def trimmed_mean(updates: torch.Tensor, beta: float) -> torch.Tensor:
    """Coordinate-wise β-trimmed mean (Yin et al. 2018): (n, d) -> (d,).

    Per coordinate, drop the k = floor(β·n) largest and k smallest values and
    average the remaining n − 2k. Tolerates up to k Byzantine updates.
    """
    x = _check_matrix(updates)
    _check_beta(beta)
    n = x.shape[0]
    k = math.floor(beta * n)
    if n - 2 * k < 1:  # reachable only through rounding of beta * n
        raise ConfigError(f"trimmed mean beta={beta} drops {k} + {k} of {n} updates; none remain")
    s = x.sort(dim=0).values  # (n, d), each column ascending
    return s[k : n - k].mean(dim=0)


def _check_f(f: int) -> int:
    if f < 0:
        raise ConfigError(f"krum f (assumed Byzantine clients) must be >= 0, got {f}")
    return int(f)


def krum_scores(updates: torch.Tensor, f: int) -> torch.Tensor:
    """Krum scores (Blanchard et al. 2017): (n, d) -> (n,).

    score_i = Σ ‖u_i − u_j‖² over the n − f − 2 nearest neighbours j ≠ i of u_i.
    The paper's guarantee needs n > 2f + 2, so fewer updates raise ConfigError.
    """
    x = _check_matrix(updates)
    _check_f(f)
    n = x.shape[0]
    if n <= 2 * f + 2:
        raise ConfigError(f"krum needs n > 2f + 2 updates, got n={n}, f={f} (need {2 * f + 3})")
    # (n, n) squared distances, one row at a time: O(n·d) memory instead of the
    # (n, n, d) broadcast, and explicit differences instead of ‖x‖² + ‖y‖² − 2x·y,
    # which cancels catastrophically for nearly identical updates.
    sq = torch.stack([((x - x[i]) ** 2).sum(dim=1) for i in range(n)])
    sq.fill_diagonal_(math.inf)  # a point is not its own neighbour
    nearest = sq.sort(dim=1).values[:, : n - f - 2]  # (n, n - f - 2)
    return nearest.sum(dim=1)


def krum(updates: torch.Tensor, f: int) -> int:
    """Index of the update with the lowest Krum score (ties: the lowest index)."""
    return int(krum_scores(updates, f).argmin().item())


def multi_krum(updates: torch.Tensor, f: int, m: int) -> tuple[int, ...]:
    """Indices of the m updates with the lowest Krum scores, ascending (Blanchard et al. 2017).

    The Multi-Krum aggregate is the mean of those updates. Requires 1 <= m <= n − f:
    choosing more than n − f updates would include a Byzantine one by pigeonhole.
    Ties are broken by lower index; indices are returned in ascending order so
    that the mean is summed in a fixed order.
    """
    scores = krum_scores(updates, f)  # (n,)
    n = scores.shape[0]
    if not (1 <= m <= n - f):
        raise ConfigError(f"multi-krum needs 1 <= m <= n - f, got m={m}, n={n}, f={f}")
    chosen = torch.sort(scores, stable=True).indices[:m]
    return tuple(sorted(int(i) for i in chosen))


# --------------------------------------------------------------------------- strategies


def _check_round(global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]) -> None:
    """Clients must share the global state's layout and agree on its non-floating tensors."""
    ids = [u.client_id for u in updates]
    if not updates or len(set(ids)) != len(ids):
        raise ConfigError(f"need >= 1 update with distinct client ids, got {ids}")
    for u in updates:
        if set(u.state) != set(global_state):
            diff = sorted(set(u.state) ^ set(global_state))
            raise ConfigError(f"client {u.client_id!r} has different keys than the global: {diff}")
        for key, ref in global_state.items():
            t = u.state[key]
            if t.shape != ref.shape or t.dtype != ref.dtype:
                raise ConfigError(
                    f"client {u.client_id!r} {key!r} is {tuple(t.shape)} {t.dtype}, "
                    f"global has {tuple(ref.shape)} {ref.dtype}"
                )
            if not ref.is_floating_point() and not torch.equal(t, updates[0].state[key]):
                raise ConfigError(f"non-floating tensor {key!r} differs between client states")


def _deltas(
    global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) float64 updates (client minus global) and the (n,) mask of all-finite rows."""
    _, matrix = stack_updates(global_state, [u.state for u in updates])
    return matrix, torch.isfinite(matrix).all(dim=1)


class ScoredStrategy(Strategy):
    """A Strategy that leaves a :class:`RobustReport` in ``last_report`` after ``aggregate``.

    A client whose update holds NaN or ±inf (a Byzantine client can send
    anything; a diverged one does) is never averaged by a robust aggregator: it
    scores +inf, is flagged, and the centre is taken over the finite updates.
    If none is finite the global model is kept for the round.
    """

    spec: str  # the ``--aggregator`` string that parse_aggregator maps to this strategy

    def __init__(self, *, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.threshold = check_threshold(threshold)
        self.last_report: RobustReport | None = None

    def _report(
        self,
        updates: Sequence[ClientUpdate],
        matrix: torch.Tensor,
        finite: torch.Tensor,
        centre: torch.Tensor | None,
    ) -> None:
        """Scores of the finite rows against ``centre``; the others (or all, without one) +inf."""
        scores = torch.full((len(updates),), math.inf, dtype=_F64)  # (n,)
        if centre is not None:
            scores[finite] = suspicion_scores(matrix[finite], centre)
        ids = [u.client_id for u in updates]
        self.last_report = RobustReport(
            scores={cid: float(s) for cid, s in zip(ids, scores.tolist(), strict=True)},
            flagged=tuple(ids[i] for i in flag(scores, self.threshold)),
            centre_name=self.spec,
        )

    def _robust_round(
        self,
        global_state: Mapping[str, torch.Tensor],
        updates: Sequence[ClientUpdate],
        centre_of: Callable[[torch.Tensor], torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Flatten the updates to (n, d), take ``centre_of`` the finite ones (d,), report."""
        self.last_report = None  # never leave a stale report behind an error
        _check_round(global_state, updates)
        matrix, finite = _deltas(global_state, updates)
        if not bool(finite.any()):
            self._report(updates, matrix, finite, None)
            return {k: t.detach().clone() for k, t in global_state.items()}
        centre = centre_of(matrix[finite])
        self._report(updates, matrix, finite, centre)
        first = updates[int(finite.nonzero()[0])].state
        return unstack_update(global_state, floating_keys(global_state), centre, first)


class ScoredFedAvg(FedAvg, ScoredStrategy):
    """FedAvg (McMahan et al. 2017), unchanged, plus a report centred on the weighted mean.

    Lets a run without a robust aggregator still show how suspicious each client
    looks, on the same scale as the robust strategies. The average is FedAvg's
    even when an update is not finite (FedAvg has no defence: the model becomes
    NaN); the report's centre is the weighted mean of the finite updates.
    """

    spec = "fedavg"
    fold = None  # the report needs every update

    def aggregate(
        self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        """FedAvg's weighted average, bit for bit; then the report."""
        self.last_report = None
        result = super().aggregate(global_state, updates)
        _check_round(global_state, updates)
        matrix, finite = _deltas(global_state, updates)  # (n, d), (n,)
        centre = None
        if bool(finite.any()):
            w = torch.tensor([float(u.num_samples) for u in updates], dtype=_F64)[finite]
            centre = (w[:, None] * matrix[finite]).sum(dim=0) / w.sum()
        self._report(updates, matrix, finite, centre)
        return result


class Median(ScoredStrategy):
    """Coordinate-wise median of the updates (Yin et al. 2018); unweighted, see module doc."""

    name: ClassVar[str] = "median"
    spec = "median"

    def aggregate(
        self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        return self._robust_round(global_state, updates, coordinate_median)


class TrimmedMean(ScoredStrategy):
    """Coordinate-wise β-trimmed mean (Yin et al. 2018); unweighted, see module doc."""

    name: ClassVar[str] = "trimmed-mean"

    def __init__(self, beta: float, *, threshold: float = DEFAULT_THRESHOLD) -> None:
        super().__init__(threshold=threshold)
        self.beta = _check_beta(beta)
        self.spec = f"trimmed-mean:{self.beta}"

    def aggregate(
        self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        return self._robust_round(global_state, updates, lambda x: trimmed_mean(x, self.beta))


class Krum(ScoredStrategy):
    """Krum (Blanchard et al. 2017): the one update closest to its neighbours; unweighted."""

    name: ClassVar[str] = "krum"

    def __init__(self, f: int, *, threshold: float = DEFAULT_THRESHOLD) -> None:
        super().__init__(threshold=threshold)
        self.f = _check_f(f)
        self.spec = f"krum:{self.f}"

    def aggregate(
        self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        return self._robust_round(global_state, updates, lambda x: x[krum(x, self.f)])


class MultiKrum(ScoredStrategy):
    """Multi-Krum (Blanchard et al. 2017): mean of the m best-scored updates; unweighted."""

    name: ClassVar[str] = "multi-krum"

    def __init__(self, f: int, m: int, *, threshold: float = DEFAULT_THRESHOLD) -> None:
        super().__init__(threshold=threshold)
        self.f = _check_f(f)
        if m < 1:
            raise ConfigError(f"multi-krum m (updates averaged) must be >= 1, got {m}")
        self.m = int(m)
        self.spec = f"multi-krum:{self.f}:{self.m}"

    def aggregate(
        self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        return self._robust_round(
            global_state, updates, lambda x: x[list(multi_krum(x, self.f, self.m))].mean(dim=0)
        )


def _build(name: str, args: list[str], threshold: float) -> ScoredStrategy:
    match name, args:
        case "fedavg", []:
            return ScoredFedAvg(threshold=threshold)
        case "median", []:
            return Median(threshold=threshold)
        case "trimmed-mean", [beta]:
            return TrimmedMean(float(beta), threshold=threshold)
        case "krum", [f]:
            return Krum(int(f), threshold=threshold)
        case "multi-krum", [f, m]:
            return MultiKrum(int(f), int(m), threshold=threshold)
    raise ConfigError("unknown name or wrong number of ':' parameters")


def parse_aggregator(spec: str, *, threshold: float = DEFAULT_THRESHOLD) -> ScoredStrategy:
    """The strategy for an ``--aggregator`` spec, e.g. ``"multi-krum:2:5"``.

    Every returned strategy has ``last_report``; "fedavg" gives :class:`ScoredFedAvg`,
    which aggregates exactly as :class:`fl.aggregation.FedAvg`. Malformed specs raise
    ConfigError with one line naming the problem and the accepted forms.
    """
    name, *args = spec.strip().split(":")
    try:
        return _build(name, args, threshold)
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"bad aggregator {spec!r} ({exc}); accepted: {ACCEPTED_SPECS}") from None
