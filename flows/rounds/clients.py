"""Who trains in a round, and with which settings and seed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from fl.partition import Partitioning
from fl.strategies import load_strategy, train_options
from fl.training import TrainConfig
from workers.base import Worker

if TYPE_CHECKING:
    from flows.config import ExperimentConfig

__all__ = ["Client", "ClientSettings", "ClientSpec", "client_seed", "train_config"]


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


@dataclass(frozen=True)
class ClientSettings:
    """What a client needs to train in a round, cut once from the experiment's
    config: the clients' code never reads (or re-validates) the whole config, and
    a batch on a Dask worker gets these few values instead of it."""

    model: str  # the model's key in requests (ExperimentConfig.model_key)
    train: TrainConfig
    seed: int  # the experiment's; a client's round seed is client_seed(seed, round, index)
    sealed: bool  # secure or HE aggregation: the trained state stays on the worker
    partitioning: Partitioning  # where a self-loading client's data comes from
    data_dir: str | None

    @classmethod
    def of(cls, cfg: ExperimentConfig, *, reference: bool = False) -> ClientSettings:
        """A FedAvg client's settings, with its side of DP (flows.defence); with
        ``reference`` the clean SGD of level 1's chain, without DP.

        Client-level DP clips the update on the worker (with a fixed clip; an
        adaptive one lives on the coordinator); sample-level DP trains with
        DP-SGD, its noise from the worker's CSPRNG unless ``--dp-noise-seed`` is given.
        """
        train = train_config(cfg)
        if not reference:
            fixed_clip = cfg.dp == "client" and cfg.dp_adaptive_quantile is None
            sample = cfg.dp == "sample"
            train = dataclasses.replace(
                train,
                update_clip=cfg.dp_clip if fixed_clip else 0.0,
                dp_clip=cfg.dp_clip if sample else 0.0,
                dp_noise=cfg.dp_noise if sample else 0.0,
                dp_noise_seed=-1 if not sample or cfg.dp_noise_seed is None else cfg.dp_noise_seed,
            )
            if cfg.strategy != "fedavg":  # what the server's rule asks of clients (FedProx's μ)
                options = train_options(load_strategy(cfg.strategy), cfg.strategy)
                train = dataclasses.replace(train, **options)
        sealed = cfg.aggregation in ("secure", "he")
        return cls(cfg.model_key, train, cfg.seed, sealed, cfg.partitioning, cfg.data_dir)
