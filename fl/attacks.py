"""Simulated malicious clients: the attacks a run can put on K of its clients.

Five attacks from the Byzantine-robust FL literature, chosen to cover the three
ways a client can lie:

* **data poisoning** — ``label-flip``: the attacker trains honestly on flipped
  labels (:func:`flip_labels`); its update is sent unchanged.
* **crude model poisoning** — ``sign-flip`` (send −κΔ) and ``noise`` (Δ +
  Gaussian noise, the "Gaussian" Byzantine worker of Blanchard et al., *Machine
  Learning with Adversaries: Byzantine Tolerant Gradient Descent*, NeurIPS 2017).
* **model replacement** — ``scale``: the model-replacement attack of
  Bagdasaryan et al., *How To Backdoor Federated Learning*, AISTATS 2020. The
  attacker trains a poisoned model X (here: on flipped labels) and sends
  G + γ(X − G), boosted so that it survives the average and replaces the
  global model. It is both a data and an update attack.
* **stealthy collusion** — ``alie``: Baruch et al., *A Little Is Enough:
  Circumventing Defenses For Distributed Learning*, NeurIPS 2019. Colluding
  attackers send the coordinate-wise mean − z·std of the updates, small enough
  to pass median/trimmed-mean/Krum yet biased in a consistent direction.

Model-poisoning attacks are pure functions over the (n, d) float64 matrix of
updates Δᵢ = stateᵢ − global (rows are clients, columns every floating
parameter flattened); randomness comes from an explicit generator. They plug
into a run through :class:`AttackedStrategy`, a :class:`~fl.aggregation.Strategy`
wrapper that rewrites the attackers' updates before the inner strategy
aggregates, so the round loop does not change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

import torch

from fl.aggregation import ClientUpdate, Strategy
from fl.data import Split
from fl.errors import ConfigError, DataError
from fl.updates import stack_updates, unstack_update

__all__ = [
    "ATTACK_KINDS",
    "DATA_ATTACKS",
    "UPDATE_ATTACKS",
    "AttackSpec",
    "AttackedStrategy",
    "alie",
    "alie_z",
    "choose_attackers",
    "flip_labels",
    "gaussian_noise",
    "parse_attack",
    "poison_split",
    "scale_update",
    "sign_flip",
]

ATTACK_KINDS: tuple[str, ...] = ("none", "label-flip", "sign-flip", "noise", "scale", "alie")
# Attacks on the attacker's training data, and attacks that rewrite its update.
DATA_ATTACKS = frozenset({"label-flip", "scale"})
UPDATE_ATTACKS = frozenset({"sign-flip", "noise", "scale", "alie"})


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    """Which attack ``attackers`` of the clients run, and its parameters.

    ``noise_std`` (default 1.0): std of the N(0, σ²) noise added to each
    coordinate of an attacker's update. Blanchard et al. use σ = 200; 1.0 is
    already far above a CNN's per-round updates (~1e-3) and its weights'
    init scale (~0.05–0.2), so even one attacker out of ten (weight 1/10, noise
    std 0.1 after averaging) visibly wrecks FedAvg, while staying in a range
    where float32 models do not overflow.

    ``scale`` (default None = the number of clients n in the round): the boost γ
    of model replacement. Bagdasaryan et al. take γ = n/η with server learning
    rate η; FedAvg has η = 1, so a lone attacker's Δ·n survives the 1/n of the
    average and replaces the global model. With unequal sample counts the exact
    factor would be Σw/w_attacker, which the attacker does not know; n is the
    paper's estimate.

    ``alie_z`` (default None = :func:`alie_z` of the round's n and attacker count).

    ``sign_factor`` κ (default 4): sign flippers send −κΔ. With κ = 1 two
    attackers of ten only shrink FedAvg's step to 60%, and their updates sit
    inside the honest spread (docs/privacy-and-robustness.md, "Attacks"); κ = 4
    cancels the honest clients' progress (0.8μ − 2·0.4μ ≈ 0), the regime in which
    a defence is needed at all.
    """

    kind: str
    attackers: int
    noise_std: float = 1.0
    scale: float | None = None
    alie_z: float | None = None
    sign_factor: float = 4.0

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise ConfigError(
                f"unknown attack {self.kind!r}: expected one of {', '.join(ATTACK_KINDS)}"
            )
        if self.attackers < 0:
            raise ConfigError(f"attackers must be >= 0, got {self.attackers}")
        if self.kind == "none" and self.attackers != 0:
            raise ConfigError(f"attack 'none' needs attackers = 0, got {self.attackers}")
        if self.kind != "none" and self.attackers < 1:
            raise ConfigError(f"attack {self.kind!r} needs attackers >= 1, got {self.attackers}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ConfigError(f"noise_std must be finite and >= 0, got {self.noise_std}")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"scale must be finite and > 0, got {self.scale}")
        if not (math.isfinite(self.sign_factor) and self.sign_factor > 0):
            raise ConfigError(f"sign_factor must be finite and > 0, got {self.sign_factor}")
        if self.alie_z is not None and not math.isfinite(self.alie_z):
            raise ConfigError(f"alie_z must be finite, got {self.alie_z}")


def parse_attack(kind: str, attackers: int) -> AttackSpec:
    """The spec of ``--attack KIND --attackers K``, with default parameters.

    Kind ``none`` requires K = 0 and every other kind K >= 1, so that a typo in
    one flag cannot silently give an honest run labelled as an attacked one.
    """
    return AttackSpec(kind=kind.strip().lower(), attackers=attackers)


def choose_attackers(
    client_ids: Sequence[str], k: int, generator: torch.Generator
) -> tuple[str, ...]:
    """The k malicious clients, drawn uniformly without replacement from ``generator``.

    Returned in the order of ``client_ids`` so the result depends only on the
    seed. The generator is advanced even when k = 0 so that later draws do not
    depend on k.
    """
    n = len(client_ids)
    if len(set(client_ids)) != n:
        raise ConfigError(f"duplicate client ids in {list(client_ids)}")
    if not 0 <= k <= n:
        raise ConfigError(f"attackers must be in [0, {n}] (the number of clients), got {k}")
    chosen = torch.randperm(n, generator=generator)[:k].sort().values
    return tuple(client_ids[int(i)] for i in chosen)


# --- pure update attacks -----------------------------------------------------


def sign_flip(update: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """−factor·update: push the model up the loss instead of down.

    The "sign flipping" Byzantine worker (e.g. Damaskinos et al. 2018, Li et al.
    2019 RSA): the honest update reversed and scaled by ``factor``
    (:class:`AttackedStrategy` uses ``AttackSpec.sign_factor``).
    """
    return update.mul(-float(factor))


def gaussian_noise(update: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """update + N(0, std²) per coordinate, drawn from ``generator`` (Blanchard et al. 2017).

    Noise is drawn in float64 on the CPU so that a seed gives the same noise
    whatever the update's dtype.
    """
    noise = torch.randn(update.shape, generator=generator, dtype=torch.float64)
    return update + noise.mul_(float(std)).to(update.dtype)


def scale_update(update: torch.Tensor, factor: float) -> torch.Tensor:
    """factor·update: model replacement's boost (Bagdasaryan et al. 2020, γ = n/η)."""
    return update.mul(float(factor))


def alie_z(n: int, m: int) -> float:
    """z_max of Baruch et al. 2019 for n clients of which m collude.

    s = ⌊n/2 + 1⌋ − m benign clients must be "won over" for the attackers to
    hold a majority; z is the largest deviation (in stds) such that a benign
    client's value is, under a Gaussian model, further from the mean than the
    attackers' with probability ≥ s/n: z = Φ⁻¹((n − s)/n). When the attackers
    already are a majority (s ≤ 0, which random client sampling can produce)
    the formula has no finite answer; s is capped at 1, the smallest support
    still needed, and n = 1 gives 0 (the std is 0 anyway).
    """
    if not 1 <= m <= n:
        raise ConfigError(f"need 1 <= attackers <= clients, got {m} attackers of {n}")
    s = max(math.floor(n / 2 + 1) - m, 1)
    p = (n - s) / n
    return NormalDist().inv_cdf(p) if 0 < p < 1 else 0.0


def alie(updates: torch.Tensor, z: float) -> torch.Tensor:
    """The (d,) vector mean − z·std over the rows of the (n, d) ``updates``.

    Every colluding attacker sends this same vector. Baruch et al. estimate
    mean and std from the honest updates the attackers can see; in simulation
    the attackers are omniscient, so ``updates`` are ALL clients' honest
    updates of the round, including the attackers' own honest training results
    (as in the paper's experiments). The std is the population std (ddof = 0,
    numpy's default), so a round with one client gives std 0 rather than NaN.
    """
    if updates.dim() != 2 or updates.shape[0] == 0:
        raise ConfigError(f"alie needs an (n >= 1, d) matrix, got {tuple(updates.shape)}")
    mean = updates.mean(dim=0)
    std = updates.std(dim=0, correction=0)
    return mean - float(z) * std


# --- data attack ---------------------------------------------------------------


def flip_labels(split: Split, num_classes: int = 10) -> Split:
    """A new Split with every label y mapped to num_classes − 1 − y (0↔9, 1↔8, ...).

    The all-classes label flip of Fang et al., *Local Model Poisoning Attacks to
    Byzantine-Robust Federated Learning*, USENIX Security 2020 (Tolpegin et al.,
    *Data Poisoning Attacks Against Federated Learning Systems*, ESORICS 2020,
    study the single source→target variant). All classes are flipped so the
    attack hurts global accuracy rather than one class. ``split`` is not
    mutated; the images are shared, not copied (they are never written to).
    """
    y = split.y
    if len(split) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"labels must be in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]"
        )
    return Split(split.x, (num_classes - 1) - y)


def poison_split(spec: AttackSpec, attackers: Sequence[str], client_id: str, split: Split) -> Split:
    """The data ``client_id`` trains on: flipped if it runs a data attack, else ``split``."""
    if spec.kind in DATA_ATTACKS and client_id in attackers:
        return flip_labels(split)
    return split


# --- strategy wrapper ------------------------------------------------------------


class AttackedStrategy(Strategy):
    """``inner`` with the attackers' updates rewritten before it aggregates.

    Attackers that are not sampled in a round do not attack that round; n and
    m of the default ``scale`` and ``alie_z`` are the round's client count and
    the number of its clients that are attackers. Honest clients' updates are
    passed through as the same objects.
    """

    def __init__(
        self,
        inner: Strategy,
        spec: AttackSpec,
        attackers: tuple[str, ...],
        generator: torch.Generator,
    ) -> None:
        if len(attackers) != spec.attackers:
            raise ConfigError(
                f"spec has {spec.attackers} attackers but {len(attackers)} ids were given"
            )
        self.inner = inner
        self.spec = spec
        self.attackers = attackers
        self._generator = generator

    # A property over Strategy's ClassVar: the name depends on the wrapped instance.
    @property
    def name(self) -> str:  # type: ignore[override]
        """The inner strategy's name: the attack is logged as its own run parameter."""
        return self.inner.name

    @property
    def last_report(self) -> object | None:
        """The inner strategy's ``last_report`` (robust aggregators' diagnostics), if any."""
        return getattr(self.inner, "last_report", None)

    def sample_clients(
        self, client_ids: Sequence[str], fraction: float, generator: torch.Generator
    ) -> list[str]:
        """Delegated to ``inner``: attackers do not change who is sampled."""
        return self.inner.sample_clients(client_ids, fraction, generator)

    def aggregate(
        self, global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        """``inner.aggregate`` of the updates with the sampled attackers' states replaced."""
        bad = [i for i, u in enumerate(updates) if u.client_id in self.attackers]
        if self.spec.kind in UPDATE_ATTACKS and bad:
            updates = self._attack(global_state, updates, bad)
        return self.inner.aggregate(global_state, updates)

    def _attack(
        self,
        global_state: Mapping[str, torch.Tensor],
        updates: Sequence[ClientUpdate],
        bad: list[int],
    ) -> list[ClientUpdate]:
        """The updates with rows ``bad`` replaced according to the spec."""
        spec, n, m = self.spec, len(updates), len(bad)
        if spec.kind == "alie":
            keys, matrix = stack_updates(global_state, [u.state for u in updates])
            z = spec.alie_z if spec.alie_z is not None else alie_z(n, m)
            rows = alie(matrix, z).expand(m, -1)
        else:
            keys, rows = stack_updates(global_state, [updates[i].state for i in bad])
            if spec.kind == "sign-flip":
                rows = sign_flip(rows, spec.sign_factor)
            elif spec.kind == "noise":
                rows = gaussian_noise(rows, spec.noise_std, self._generator)
            else:
                assert spec.kind == "scale", spec.kind
                rows = scale_update(rows, spec.scale if spec.scale is not None else float(n))
        result = list(updates)
        for row, i in zip(rows, bad, strict=True):
            own = updates[i].state
            forged = unstack_update(global_state, keys, row)
            # Keep the attacker's own key order and non-floating tensors.
            state = {k: forged[k] if k in keys else t for k, t in own.items()}
            result[i] = replace(updates[i], state=state)
        return result
