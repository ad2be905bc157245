"""Typed experiment configuration shared by the CLI, the flows and MLflow.

``ExperimentConfig`` is the one place where the options of ``fedsim run`` are
validated; the Prefect flows take its ``to_dict()`` form as their parameters
(plain JSON, so a flow run can be reproduced from the Prefect UI), and MLflow
logs the same names as params.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Any

from fl.data import DATASETS
from fl.errors import ConfigError
from fl.models import MODELS
from fl.partition import Partitioning, parse_partition
from fl.strategies import load_strategy, train_options
from fl.tasks import Task, experiment_task, load_task
from flows.defence import check_defence
from flows.engine import check_engine
from flows.level import AGGREGATIONS, Level, parse_levels
from flows.profiles import PROFILES
from workers.cohort import default_min_cohort

__all__ = ["PROFILES", "ExperimentConfig"]


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """Everything that defines one ``fedsim run``; validated on construction."""

    levels: str = "baseline,1,2,3"
    dataset: str = "fashion-mnist"
    model: str = "cnn"
    # The user's task (fl.tasks): package.module:name or path/file.py:name; it
    # replaces --dataset and --model. None: the built-in task of those two.
    task: str | None = None
    workers: int = 4
    rounds: int = 6
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    fraction: float = 1.0
    partition: str = "iid"
    aggregation: str = "plain"
    # Secure aggregation: committee size k (clients share their updates among k
    # workers) and SPDZ MACs on every share (malicious-secure opening).
    committee: int = 3
    mac: bool = False
    # The fewest clients a securely aggregated sum may hold (members refuse to
    # open smaller ones); None: 3, or every client of a round with fewer.
    min_cohort: int | None = None
    # Robustness and privacy (flows.defence): the aggregator of FedAvg levels,
    # simulated attackers, and differential privacy at client or sample level.
    aggregator: str = "fedavg"
    # The server strategy of FedAvg levels: a built-in or package.module:Class
    # (fl.strategies); robust --aggregator and --dp client choose their own.
    strategy: str = "fedavg"
    attack: str = "none"
    attackers: int = 0
    dp: str = "none"
    dp_noise: float = 1.0
    dp_clip: float = 1.0
    dp_delta: float = 1e-5
    dp_target_epsilon: float | None = None
    dp_adaptive_quantile: float | None = None
    dp_noise_seed: int | None = None  # simulation only: reproducible, NOT private DP noise
    seed: int = 0
    profile: str = "quick"
    train_samples: int | None = 8_000
    test_samples: int | None = 2_000
    experiment: str = "fedsim"
    data_dir: str | None = None
    # Websocket levels (4, 5): level 5's workers file, the fewest workers a round
    # may complete with, and how long one request may take before its worker is
    # dropped for the round.
    workers_file: str | None = None
    min_workers: int = 1
    request_timeout: float = 600.0
    # Client training engine (flows.engine): the Prefect task runner of level 3
    # (local or dask), the Dask scheduler (None: a LocalCluster of dask_workers
    # processes), how many tasks a round's clients are batched into, and torch
    # threads per client's training (None: torch's default).
    task_runner: str = "local"
    dask_address: str | None = None
    dask_workers: int = 2
    round_tasks: int = 2
    client_threads: int | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("aggregation", self.aggregation, AGGREGATIONS)
        levels = parse_levels(self.levels, self.aggregation)
        parse_partition(self.partition)
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("model", self.model, tuple(MODELS))
        if self.task is not None:
            _check_task(self, load_task(self.task), levels)
        _check_min("committee", self.committee, 2)
        if self.min_cohort is not None:
            _check_min("min_cohort", self.min_cohort, 2)
        secure = [lv for lv in levels if lv.aggregation == "secure"]
        if any(lv.aggregation in ("secure", "he") for lv in levels) and self.workers < 2:
            raise ConfigError("secure and homomorphic aggregation need --workers >= 2")
        if self.mac and not secure:
            raise ConfigError("--mac authenticates secure aggregation: add --aggregation secure")
        if self.mac and self.workers < 3:
            raise ConfigError("--mac needs --workers >= 3 (a committee of 2 and a dealer)")
        _check_choice("profile", self.profile, tuple(PROFILES))
        _check_min("workers", self.workers, 1)
        _check_min("rounds", self.rounds, 1)
        _check_min("epochs", self.epochs, 1)
        _check_min("batch-size", self.batch_size, 1)
        _check_min("seed", self.seed, 0)
        if self.seed >= 2**63:  # torch.manual_seed takes a signed 64-bit seed
            raise ConfigError(f"--seed must be < 2**63, got {self.seed}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"--fraction must be in (0, 1], got {self.fraction}")
        for name in ("train_samples", "test_samples"):
            value = getattr(self, name)
            if value is not None:
                _check_min(name.replace("_", "-"), value, 1)
        if self.train_samples is not None and self.train_samples < self.workers:
            raise ConfigError(
                f"--train-samples {self.train_samples} is fewer than --workers {self.workers}"
            )
        _check_min("min-workers", self.min_workers, 1)
        if self.min_workers > self.workers:
            raise ConfigError(
                f"--min-workers {self.min_workers} is more than --workers {self.workers}"
            )
        if not self.request_timeout > 0:
            raise ConfigError(f"--timeout must be > 0, got {self.request_timeout}")
        remote = [level for level in self.level_list if level.remote]
        if remote and not self.workers_file:
            raise ConfigError(f"level {remote[0].number} ({remote[0].name}) needs --workers-file")
        if not self.experiment.strip():
            raise ConfigError("--experiment must not be empty")
        check_defence(self, levels)
        check_engine(self, levels)

    @property
    def partitioning(self) -> Partitioning:
        """How the run cuts its training data among its ``workers`` clients."""
        return Partitioning(
            self.data_key, self.partition, self.workers, self.seed, self.train_samples
        )

    @property
    def learning_task(self) -> Task:
        """The task the run learns: ``--task``'s, else ``--dataset`` with ``--model``."""
        return experiment_task(self.task, self.dataset, self.model, self.data_dir)

    @property
    def model_key(self) -> str:
        """How requests name the model to workers (fl.tasks.model_task)."""
        return self.task or self.model

    @property
    def data_key(self) -> str:
        """How the run names its data to workers that load their own (fl.tasks.data_task)."""
        return self.task or self.dataset

    @property
    def level_list(self) -> tuple[Level, ...]:
        return parse_levels(self.levels, self.aggregation)

    def for_level(self, level: Level) -> ExperimentConfig:
        """This config as ``level`` runs it: its own aggregation for a FedAvg variant."""
        if level.aggregation is None or level.aggregation == self.aggregation:
            return self
        return dataclasses.replace(self, aggregation=level.aggregation)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form used as Prefect flow parameters."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown experiment option(s): {', '.join(unknown)}")
        return cls(**data)

    def command(self) -> str:
        """The ``fedsim run`` command line that reproduces this config exactly.

        Every option is spelled out (profile defaults included), so the command
        means the same whatever the defaults of a later version are.
        """
        q = shlex.quote  # every value as one shell word: "baseline, 2", "my exp"
        parts = ["fedsim run", f"--profile {q(self.profile)}", f"--levels {q(self.levels)}"]
        if self.task is not None:
            parts.append(f"--task {q(self.task)}")
        else:
            parts.append(f"--dataset {q(self.dataset)} --model {q(self.model)}")
        for name in (
            "workers", "rounds", "epochs", "batch_size", "lr",
            "fraction", "partition", "aggregation", "committee", "aggregator", "strategy",
            "attack",
            "attackers", "dp", "seed", "experiment", "min_workers", "task_runner",
            "round_tasks",
        ):  # fmt: skip
            parts.append(f"--{name.replace('_', '-')} {q(str(getattr(self, name)))}")
        for name in ("train_samples", "test_samples"):
            value = getattr(self, name)
            parts.append(f"--{name.replace('_', '-')} {'all' if value is None else value}")
        if self.min_cohort is not None:
            parts.append(f"--min-cohort {self.min_cohort}")
        parts.append(f"--timeout {self.request_timeout:g}")
        if self.dp != "none":
            parts.append(
                f"--dp-noise {self.dp_noise!r} --dp-clip {self.dp_clip!r} "
                f"--dp-delta {self.dp_delta!r}"
            )
            for name in ("dp_target_epsilon", "dp_adaptive_quantile", "dp_noise_seed"):
                if getattr(self, name) is not None:
                    option = "dp-adaptive-clip" if name == "dp_adaptive_quantile" else name
                    parts.append(f"--{option.replace('_', '-')} {getattr(self, name)!r}")
        if self.task_runner == "dask":
            parts.append(f"--dask-workers {self.dask_workers}")
        if self.client_threads is not None:
            parts.append(f"--client-threads {self.client_threads}")
        if self.mac:
            parts.append("--mac")
        for name in ("data_dir", "workers_file", "dask_address"):
            if getattr(self, name) is not None:
                parts.append(f"--{name.replace('_', '-')} {q(getattr(self, name))}")
        return " ".join(parts)

    def mlflow_params(self, level: Level) -> dict[str, str]:
        """Params of one level's MLflow run (names listed in docs/operations.md, "MLflow")."""
        return (
            {"level": level.name}
            | ({"task": self.task} if self.task else {"dataset": self.dataset, "model": self.model})
            | {
                "partition": self.partition,
                "workers": str(self.workers),
                "rounds": str(self.rounds),
                "epochs": str(self.epochs),
                "batch_size": str(self.batch_size),
                "lr": str(self.lr),
                "fraction": str(self.fraction),
                "seed": str(self.seed),
                "aggregation": self.aggregation if level.fedavg else "none",
                "profile": self.profile,
                "train_samples": str(self.train_samples or "all"),
                "test_samples": str(self.test_samples or "all"),
            }
            | self._engine_params(level)
            | self._secure_params(level)
            | self._defence_params(level)
        )

    def _engine_params(self, level: Level) -> dict[str, str]:
        if not level.in_process_batches:
            return {}
        params = {"round_tasks": str(self.round_tasks), "task_runner": "local"}
        if level.dask and self.task_runner == "dask":
            params |= {
                "task_runner": "dask",
                "dask_address": self.dask_address or f"LocalCluster({self.dask_workers})",
            }
        if self.client_threads is not None:
            params["client_threads"] = str(self.client_threads)
        return params

    def _secure_params(self, level: Level) -> dict[str, str]:
        if not level.fedavg or self.aggregation != "secure":
            return {}
        return {
            "committee": str(self.committee),
            "mac": str(self.mac).lower(),
            "min_cohort": "default" if self.min_cohort is None else str(self.min_cohort),
        }

    def cohort_floor(self, clients: int) -> int:
        """The minimum cohort of a round of ``clients``: the option, else 3 (or all, if fewer)."""
        return self.min_cohort if self.min_cohort is not None else default_min_cohort(clients)

    def _defence_params(self, level: Level) -> dict[str, str]:
        """Aggregator, attack and DP params of a FedAvg level (docs/operations.md, "MLflow")."""
        if not level.fedavg:
            return {}
        params = {
            "aggregator": self.aggregator,
            "strategy": self.strategy,
            "attack": self.attack,
            "attackers": str(self.attackers),
            "dp": self.dp,
        }
        if self.dp != "none":
            params |= {
                "dp_noise": str(self.dp_noise),
                "dp_clip": str(self.dp_clip),
                "dp_delta": str(self.dp_delta),
            }
            for name in ("dp_target_epsilon", "dp_adaptive_quantile", "dp_noise_seed"):
                if getattr(self, name) is not None:  # unset: no param, not the string "None"
                    params[name] = str(getattr(self, name))
        return params


def _check_task(cfg: ExperimentConfig, task: Task, levels: tuple[Level, ...]) -> None:
    """One line for what a task cannot run with: the levels and options that need
    the built-in model, or fedsim's SGD loop when the task brings its own step."""
    fixed = [lv.name for lv in levels if lv.fixed_model]
    if fixed:
        raise ConfigError(
            f"--task: level {fixed[0]} evaluates its own built-in model; drop it from --levels"
        )
    if task.train is None:
        return
    # What changes fedsim's SGD loop, which a task with its own train step does not run.
    sets = train_options(load_strategy(cfg.strategy), cfg.strategy)
    what = "--dp sample (DP-SGD)" if cfg.dp == "sample" else f"--strategy {cfg.strategy}"
    if cfg.dp == "sample" or sets:
        raise ConfigError(
            f"--task {cfg.task!r} brings its own train step; {what} changes fedsim's SGD loop, "
            "which that task does not use"
        )


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{option} {value!r} is not one of: {', '.join(choices)}")


def _check_min(option: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"--{option} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"--{option} must be >= {minimum}, got {value}")
