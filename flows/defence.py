"""Robust aggregation, simulated attacks and differential privacy, wired into a FedAvg level.

The algorithms live in ``fl`` (``fl.robust``, ``fl.attacks``, ``fl.privacy``,
``fl.dp_training``); this module only decides, from an :class:`ExperimentConfig`,
which :class:`~fl.aggregation.Strategy` a FedAvg level (2-5) aggregates with and
which clients are malicious, and keeps the per-round bookkeeping MLflow logs:
the clients a robust aggregator flags (with precision and recall against the
simulated attackers) and the privacy accountant's ε. The baseline and level 1
stay clean references: no attack, no defence, no noise.

Where each piece runs:

- **Attacks** are simulated where a real attacker would act. Data attacks
  (label-flip, and scale's poisoned model) flip the attacker's own training
  labels, so they need workers whose data this process prepares (levels 2-3).
  Update attacks (sign-flip, noise, scale's boost, ALIE) rewrite the
  attackers' updates just before aggregation
  (:class:`fl.attacks.AttackedStrategy`), so they need the updates in the
  clear: plain aggregation.
- **Robust aggregators** need every individual update: with ``--aggregation
  secure`` or ``he`` the coordinator only ever sees the sum, so the combination
  is refused until a norm-bounding check inside MPC exists.
- **Client-level DP** (DP-FedAvg): every client clips its own update to L2
  norm S before it leaves the worker (``TrainConfig.update_clip``); the
  coordinator clips again (a client that skipped it gains nothing), averages
  with weight 1 per client and adds N(0, (zS)²)/n. Under secure aggregation
  the coordinator opens only the average of ≥ 2 clipped updates and adds the
  noise to it before anything is evaluated or sent back; no party ever sees an
  individual update, noised or not, and the released models carry the full
  noise, which is what the accountant's ε is about. The cohort (a fixed-size
  sample without replacement) and the noise come from the strategy's CSPRNG,
  and ε is that of sampling without replacement (``fl.accounting``).
- **Sample-level DP** (DP-SGD) runs inside each client's local training
  (Opacus's clipping; Poisson batches and noise from a CSPRNG on the worker);
  the coordinator accounts for it (Poisson RDP) from the public batch size,
  partition sizes and epochs, and reports the largest ε over clients.
- ``--dp-noise-seed`` replaces the CSPRNG by seeded generators, so that runs
  can be repeated exactly. Anyone with the run's params can then regenerate
  the noise and the sampling: the run is tagged ``fedsim.dp.private=false``
  and its ε is not a guarantee.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from fl.aggregation import ClientUpdate, FedAvg, Strategy
from fl.attacks import (
    DATA_ATTACKS,
    UPDATE_ATTACKS,
    AttackedStrategy,
    choose_attackers,
    parse_attack,
)
from fl.detection import flag_quality
from fl.dp_training import dp_sample_rate, dp_steps_per_epoch
from fl.errors import ConfigError
from fl.noise import noise_source
from fl.privacy import DPConfig, DPFedAvg, PrivacyAccountant, check_budget
from fl.robust import ScoredStrategy, parse_aggregator
from fl.strategies import averages, load_strategy, train_options
from fl.task_data import task_split

if TYPE_CHECKING:
    from flows.config import ExperimentConfig
    from flows.level import Level

__all__ = [
    "DP_CHOICES",
    "DP_PRIVATE_TAG",
    "Defence",
    "attacker_indices",
    "check_defence",
    "dp_config",
    "dp_tags",
    "partition_sizes",
    "poisoned_indices",
]

DP_CHOICES: tuple[str, ...] = ("none", "client", "sample")
# Attackers are drawn from their own seed stream, so choosing them does not
# shift client sampling or training: an attacked run differs from the clean
# one with the same seed only by what the attackers do.
_ATTACKER_STREAM = 0xA77AC4
# MLflow tag of a DP level: "true", or "false" with the reason in DP_PRIVATE_TAG + ".reason".
DP_PRIVATE_TAG = "fedsim.dp.private"
# Mixed into --dp-noise-seed for the coordinator's stream (the workers mix in their own).
_DP_NOISE_STREAM = 0xD9_0153


def dp_tags(cfg: ExperimentConfig) -> dict[str, str]:
    """Tags saying whether a DP run's noise is private; empty without ``--dp``."""
    if cfg.dp == "none":
        return {}
    if cfg.dp_noise_seed is None:
        return {DP_PRIVATE_TAG: "true"}
    reason = (
        f"reproducible noise seed (--dp-noise-seed {cfg.dp_noise_seed}): anyone with the "
        "run's params can regenerate the noise and the sampling"
    )
    return {DP_PRIVATE_TAG: "false", f"{DP_PRIVATE_TAG}.reason": reason}


def dp_config(cfg: ExperimentConfig) -> DPConfig | None:
    """The run's DP settings, or None without ``--dp``."""
    if cfg.dp == "none":
        return None
    return DPConfig(
        mode="client" if cfg.dp == "client" else "sample",
        noise_multiplier=cfg.dp_noise,
        clip=cfg.dp_clip,
        delta=cfg.dp_delta,
        target_epsilon=cfg.dp_target_epsilon,
        adaptive_quantile=cfg.dp_adaptive_quantile,
    )


def check_defence(cfg: ExperimentConfig, levels: Sequence[Level]) -> None:
    """One clear ConfigError for an aggregator, attack or DP setting the run cannot honour."""
    if cfg.dp not in DP_CHOICES:
        raise ConfigError(f"--dp {cfg.dp!r} is not one of: {', '.join(DP_CHOICES)}")
    if cfg.dp == "none" and (cfg.dp_target_epsilon, cfg.dp_adaptive_quantile) != (None, None):
        raise ConfigError("--dp-target-epsilon and --dp-adaptive-clip need --dp client or sample")
    if cfg.dp_noise_seed is not None:
        if cfg.dp == "none":
            raise ConfigError("--dp-noise-seed needs --dp client or sample")
        if isinstance(cfg.dp_noise_seed, bool) or not 0 <= cfg.dp_noise_seed < 2**62:
            raise ConfigError(f"--dp-noise-seed must be in [0, 2**62), got {cfg.dp_noise_seed}")
    strategy = load_strategy(cfg.strategy)  # imported once here: a bad spec is one line now
    robust_strategy = isinstance(strategy, ScoredStrategy)  # --strategy median, krum:f=1, ...
    robust = parse_aggregator(cfg.aggregator).spec != "fedavg"
    attack = parse_attack(cfg.attack, cfg.attackers)
    dp = dp_config(cfg)
    if train_options(strategy, cfg.strategy).get("prox_mu") and cfg.dp == "sample":
        raise ConfigError(
            f"--strategy {cfg.strategy}: a proximal term and --dp sample do not combine"
        )
    if cfg.strategy != "fedavg" and (robust or (dp is not None and dp.mode == "client")):
        chosen = f"--aggregator {cfg.aggregator}" if robust else "--dp client"
        raise ConfigError(f"--strategy {cfg.strategy} and {chosen} each choose the server's rule")
    if attack.attackers > cfg.workers:
        raise ConfigError(f"--attackers {cfg.attackers} is more than --workers {cfg.workers}")
    hidden = sorted({lv.key for lv in levels if lv.aggregation in ("secure", "he")})
    if hidden and not averages(strategy):
        raise ConfigError(
            f"--strategy {cfg.strategy} needs every client's update, which {hidden[0]} hides "
            "(the coordinator sees only the sum): give it a finish_mean, or use plain aggregation"
        )
    if robust and hidden:
        raise ConfigError(
            f"--aggregator {cfg.aggregator} needs every client's update, which {hidden[0]} "
            "hides (the coordinator sees only the sum): use plain aggregation"
        )
    robust = robust or robust_strategy  # from here on, either spelling
    if attack.kind in UPDATE_ATTACKS and hidden:
        raise ConfigError(
            f"--attack {attack.kind} rewrites updates the coordinator never sees under "
            f"{hidden[0]}: use --attack label-flip or plain aggregation"
        )
    if attack.kind in DATA_ATTACKS and any(lv.processes or lv.remote for lv in levels):
        raise ConfigError(
            f"--attack {attack.kind} poisons training data, which workers at levels 4-5 load "
            "themselves: run it at levels 2-3"
        )
    if dp is not None and dp.mode == "client":
        if robust:
            raise ConfigError("--dp client averages clipped updates: use --aggregator fedavg")
        if dp.adaptive_quantile is not None and hidden:
            raise ConfigError(
                "--dp-adaptive-clip needs each client's update norm, which "
                f"{hidden[0]} hides: use plain aggregation or a fixed --dp-clip"
            )


def attacker_indices(cfg: ExperimentConfig) -> tuple[int, ...]:
    """Which worker indices are malicious: ``--attackers`` of them, from the seed."""
    if cfg.attackers == 0:
        return ()
    generator = torch.Generator().manual_seed(cfg.seed ^ _ATTACKER_STREAM)
    ids = [str(i) for i in range(cfg.workers)]
    return tuple(int(i) for i in choose_attackers(ids, cfg.attackers, generator))


def partition_sizes(cfg: ExperimentConfig) -> list[int]:
    """Training samples of each worker's partition (public: the partition is seeded)."""
    train = task_split(cfg.learning_task, train=True, limit=cfg.train_samples)
    parts = cfg.partitioning.indices(train.y)
    return [len(part) for part in parts]


def poisoned_indices(cfg: ExperimentConfig) -> frozenset[int]:
    """Worker indices whose training labels are flipped (a data attack), else empty."""
    return frozenset(attacker_indices(cfg)) if cfg.attack in DATA_ATTACKS else frozenset()


class Defence:
    """One FedAvg level's strategy plus its per-round privacy and detection bookkeeping."""

    def __init__(self, cfg: ExperimentConfig, worker_ids: Sequence[str]) -> None:
        if len(worker_ids) != cfg.workers:
            raise ConfigError(f"{len(worker_ids)} worker ids for --workers {cfg.workers}")
        self.cfg = cfg
        self.dp = dp_config(cfg)
        self.attackers = tuple(worker_ids[i] for i in attacker_indices(cfg))
        # Sample-level DP: each client's partition size sets its DP-SGD sampling rate.
        self.sizes = (
            dict(zip(worker_ids, partition_sizes(cfg), strict=True))
            if self.dp is not None and self.dp.mode == "sample"
            else {}
        )
        strategy: Strategy
        if self.dp is not None and self.dp.mode == "client":
            seed = cfg.dp_noise_seed
            noise = noise_source(None if seed is None else seed ^ _DP_NOISE_STREAM)
            strategy = DPFedAvg(self.dp, noise=noise)
        elif cfg.strategy != "fedavg":
            strategy = load_strategy(cfg.strategy)
        elif cfg.aggregator == "fedavg" and cfg.attack == "none":
            # A clean FedAvg run: no suspicion scores, so no (n, d) matrix per round.
            strategy = FedAvg()
        else:
            strategy = parse_aggregator(cfg.aggregator)
        if cfg.attack in UPDATE_ATTACKS:
            spec = parse_attack(cfg.attack, cfg.attackers)
            generator = torch.Generator().manual_seed(cfg.seed ^ (_ATTACKER_STREAM << 1))
            strategy = AttackedStrategy(strategy, spec, self.attackers, generator)
        self.strategy = strategy
        self.accountants: dict[str, PrivacyAccountant] = {}
        # Per round: the suspicion scores and flagged clients (MLflow artifact flags.json).
        self.flags: list[dict[str, object]] = []

    # ------------------------------------------------------------------ privacy

    def _accountant(self, key: str) -> PrivacyAccountant:
        """The accountant of ``key``: a fixed-size cohort for client-level DP, Poisson batches
        (DP-SGD) for sample level — the sampling each mechanism really uses."""
        assert self.dp is not None
        if key not in self.accountants:
            sampling = "fixed-size" if self.dp.mode == "client" else "poisson"
            self.accountants[key] = PrivacyAccountant(sampling=sampling)
        return self.accountants[key]

    def _round_mechanisms(self, client_ids: Sequence[str]) -> dict[str, tuple[float, int]]:
        """Per accountant key: (sample rate, steps) of one round."""
        assert self.dp is not None
        if self.dp.mode == "client":
            m = max(round(self.cfg.fraction * self.cfg.workers), 1)
            return {"clients": (m / self.cfg.workers, 1)}
        batch, epochs = self.cfg.batch_size, self.cfg.epochs
        return {
            cid: (
                dp_sample_rate(batch, self.sizes[cid]),
                epochs * dp_steps_per_epoch(batch, self.sizes[cid]),
            )
            for cid in client_ids
            if cid in self.sizes
        }

    def before_round(self, round_index: int) -> None:
        """Raise BudgetExceeded if the round could take any client past ``--dp-target-epsilon``.

        Every client is assumed to take part (conservative under sampling).
        """
        if self.dp is None or self.dp.target_epsilon is None:
            return
        for key, (rate, steps) in self._round_mechanisms(list(self.sizes)).items():
            spent = self._accountant(key)
            check_budget(spent, self.dp, round_index=round_index, sample_rate=rate, steps=steps)

    def epsilon(self) -> float:
        """ε spent so far (the largest over clients for sample-level DP)."""
        assert self.dp is not None
        return max((a.epsilon(self.dp.delta) for a in self.accountants.values()), default=0.0)

    # ------------------------------------------------------------------ per round

    def after_round(self, updates: Sequence[ClientUpdate]) -> dict[str, float]:
        """Account the round's privacy and report the strategy's flags; MLflow metrics."""
        metrics: dict[str, float] = {}
        if self.dp is not None:
            sampled = [u.client_id for u in updates]
            for key, (rate, steps) in self._round_mechanisms(sampled).items():
                self._accountant(key).step(self.dp.noise_multiplier, rate, steps)
            metrics["dp_epsilon"] = self.epsilon()
            clip = getattr(self.strategy, "clip", None)
            if isinstance(clip, float):
                metrics["dp_clip"] = clip
        report = getattr(self.strategy, "last_report", None)
        if report is not None:
            present = {u.client_id for u in updates} & set(self.attackers)
            precision, recall = flag_quality(report.flagged, present)
            flagged, attackers = list(report.flagged), sorted(present)
            self.flags.append({"scores": report.scores, "flagged": flagged, "attackers": attackers})
            metrics["flagged_clients"] = float(len(report.flagged))
            if self.attackers:
                metrics["flag_precision"], metrics["flag_recall"] = precision, recall
        return {k: v for k, v in metrics.items() if math.isfinite(v)}  # ε = ∞ when z = 0
