"""Detection of suspicious clients: a score per client each round, and who is flagged.

A client's suspicion score is the L2 distance of its update to the round's
aggregate (the robust centre) divided by the median of those distances, so
honest clients score about 1 whatever the model size or learning rate; clients
scoring above a threshold (default 2) are flagged. The rule is the same for
every aggregator in :mod:`fl.robust` (Krum could instead flag "not selected")
so that scores are comparable across aggregators. Detection only reports:
leaving updates out is the aggregator's job. In simulation the true attackers
are known, so :func:`flag_quality` scores the flags themselves.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import torch

from fl.errors import ConfigError

__all__ = [
    "DEFAULT_THRESHOLD",
    "RobustReport",
    "check_threshold",
    "flag",
    "flag_quality",
    "suspicion_scores",
]

DEFAULT_THRESHOLD = 2.0


@dataclass(frozen=True)
class RobustReport:
    """One round's detection result: suspicion score per client id and the flagged ids."""

    scores: dict[str, float]
    flagged: tuple[str, ...]
    centre_name: str


def suspicion_scores(updates: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """‖u_i − centre‖₂ / median_j ‖u_j − centre‖₂: (n, d), (d,) -> (n,).

    Normalising by the median distance makes the score scale-free, about 1 for
    honest clients whatever the model size or learning rate. If more than half
    the updates sit exactly on the centre the median is 0: those score 0 and any
    other update scores +inf.
    """
    if updates.dim() != 2 or updates.shape[0] == 0 or not bool(torch.isfinite(updates).all()):
        raise ConfigError(f"updates must be a finite (n >= 1, d) matrix, got {updates.shape}")
    x = updates.to(torch.float64)
    if centre.shape != (x.shape[1],) or not bool(torch.isfinite(centre).all()):
        raise ConfigError(
            f"centre must be finite with shape ({x.shape[1]},), got {tuple(centre.shape)}"
        )
    dist: torch.Tensor = torch.linalg.vector_norm(x - centre.to(torch.float64), dim=1)  # (n,)
    med = torch.quantile(dist, 0.5)  # interpolates for even n, as numpy.median
    if med > 0:
        return dist / float(med)
    return torch.where(dist > 0, torch.full_like(dist, math.inf), torch.zeros_like(dist))


def check_threshold(threshold: float) -> float:
    if not threshold > 0:  # also rejects NaN; +inf means "never flag"
        raise ConfigError(f"suspicion threshold must be > 0, got {threshold}")
    return float(threshold)


def flag(scores: torch.Tensor, threshold: float) -> tuple[int, ...]:
    """Indices (ascending) of the scores strictly above ``threshold``."""
    check_threshold(threshold)
    if scores.dim() != 1:
        raise ConfigError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    return tuple(int(i) for i in (scores > threshold).nonzero().flatten())


def flag_quality(flagged: Collection[str], attackers: Collection[str]) -> tuple[float, float]:
    """(precision, recall) of the flagged set against the true attackers.

    Conventions for empty sets: precision is 1.0 when nothing is flagged (no
    honest client was accused), recall is 1.0 when there are no attackers
    (nothing was missed). So a quiet round without attackers scores (1.0, 1.0),
    and missing every attacker shows as recall 0.0, not as low precision.
    """
    hits = len(set(flagged) & set(attackers))
    precision = hits / len(set(flagged)) if flagged else 1.0
    recall = hits / len(set(attackers)) if attackers else 1.0
    return precision, recall
