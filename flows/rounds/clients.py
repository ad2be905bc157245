"""Who trains in a round, and with which settings and seed."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from fl.training import TrainConfig
from flows.config import ExperimentConfig
from workers.base import Worker

__all__ = ["Client", "ClientSpec", "client_seed", "client_train_config", "train_config"]


class Client(NamedTuple):
    """A sampled client: its index among all workers, which seeds its training and
    names its partition, and the worker that trains for it."""

    index: int
    worker: Worker


class ClientSpec(NamedTuple):
    """A client that exists only while its batch trains (level 3 with plain
    aggregation): materialised from its partition where the batch runs."""

    index: int
    poisoned: bool  # a label-flipping client (--attack label-flip)


def client_seed(seed: int, round_index: int, client_index: int) -> int:
    """Independent, reproducible seed for one client's local training in one round."""
    sequence = np.random.SeedSequence([seed, round_index, client_index])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def train_config(cfg: ExperimentConfig) -> TrainConfig:
    """Local SGD settings of the baseline and level 1 (the clean references)."""
    return TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr)


def client_train_config(cfg: ExperimentConfig) -> TrainConfig:
    """A FedAvg client's settings: plus its side of DP (flows.defence).

    Client-level DP clips the update on the worker (with a fixed clip; an
    adaptive one lives on the coordinator); sample-level DP trains with DP-SGD,
    its noise from the worker's CSPRNG unless ``--dp-noise-seed`` is given.
    """
    fixed_clip = cfg.dp == "client" and cfg.dp_adaptive_quantile is None
    return dataclasses.replace(
        train_config(cfg),
        update_clip=cfg.dp_clip if fixed_clip else 0.0,
        dp_clip=cfg.dp_clip if cfg.dp == "sample" else 0.0,
        dp_noise=cfg.dp_noise if cfg.dp == "sample" else 0.0,
        dp_noise_seed=-1 if cfg.dp != "sample" or cfg.dp_noise_seed is None else cfg.dp_noise_seed,
    )
