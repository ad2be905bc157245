"""The levels of realism: one registry of objects, each with its flow and capabilities.

A level says what it is (name, number), which Prefect flow runs it, and what
it can do; the rest of fedsim asks these questions of the level and never
tests its number. Adding a level is one module with its flow and one line in
:data:`LEVELS` (see docs/design.md, "Adding a level").
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fl.errors import ConfigError

__all__ = ["AGGREGATIONS", "LEVELS", "Level", "level_named", "parse_levels"]

AGGREGATIONS: tuple[str, ...] = ("plain", "secure", "he")

LevelFlow = Callable[[dict[str, Any], str | None, dict[str, float] | None], dict[str, Any]]


@dataclass(frozen=True)
class Level:
    """One level of simulation realism (see docs/design.md, "The levels and the round loop").

    FedAvg levels also carry their aggregation, so one run can compare ``2``
    and ``2:secure`` side by side; other levels have none.
    """

    number: int
    name: str
    flow: str  # "module:function" of its Prefect flow, imported when the level runs
    centralized: bool = False  # the baseline: every other level's slowdown is measured against it
    fedavg: bool = False  # rounds average client updates: aggregation, defences and DP apply
    own_data: bool = False  # each worker loads its partition itself
    in_process_batches: bool = False  # clients train in Prefect task batches (--round-tasks)
    dask: bool = False  # those batches can run on Dask workers (--task-runner dask)
    processes: bool = False  # one worker process per client, started by the coordinator
    remote: bool = False  # workers started independently, listed in --workers-file
    slowdown: bool = True  # trains the baseline's work, so its slowdown is reported
    numbered: bool = True  # --levels accepts its number as well as its name
    fixed_model: bool = False  # runs its own built-in model, whatever --task says
    aggregation: str | None = None

    @property
    def run_name(self) -> str:
        """MLflow child-run name: ``L<n> <name>``, plus `` (secure)`` / `` (he)`` for
        secret-shared / homomorphic aggregation."""
        suffix = f" ({self.aggregation})" if self.aggregation not in (None, "plain") else ""
        return f"L{self.number} {self.name}{suffix}"

    @property
    def key(self) -> str:
        """How the level is written in ``--levels`` (``2:secure`` for a secure variant)."""
        suffix = f":{self.aggregation}" if self.aggregation not in (None, "plain") else ""
        return f"{self.name}{suffix}"

    def with_aggregation(self, aggregation: str) -> Level:
        """This level aggregating with ``aggregation`` (FedAvg levels only)."""
        if not self.fedavg:
            raise ConfigError(
                f"level {self.name!r} does not aggregate client updates: "
                f"':{aggregation}' applies to levels {_fedavg_span()}"
            )
        return dataclasses.replace(self, aggregation=aggregation)

    def as_run(self, aggregation: str) -> Level:
        """This level as a run with ``aggregation`` runs it (ignored by non-FedAvg levels)."""
        return self.with_aggregation(aggregation) if self.fedavg else self

    def load_flow(self) -> LevelFlow:
        """The level's Prefect flow, imported now (the flows import this module)."""
        module, _, function = self.flow.partition(":")
        flow: LevelFlow = getattr(importlib.import_module(module), function)
        return flow


LEVELS: tuple[Level, ...] = (
    Level(0, "baseline", "flows.in_process_levels:baseline_flow", centralized=True),
    Level(1, "sequential", "flows.in_process_levels:sequential_flow"),
    Level(
        2,
        "federated",
        "flows.in_process_levels:federated_flow",
        fedavg=True,
        in_process_batches=True,
    ),
    Level(
        3,
        "decentralized",
        "flows.in_process_levels:decentralized_flow",
        fedavg=True,
        own_data=True,
        in_process_batches=True,
        dask=True,
    ),
    Level(
        4,
        "websocket-local",
        "flows.websocket_levels:websocket_local_flow",
        fedavg=True,
        own_data=True,
        processes=True,
    ),
    Level(
        5,
        "websocket-remote",
        "flows.websocket_levels:websocket_remote_flow",
        fedavg=True,
        own_data=True,
        remote=True,
    ),
    Level(
        6,
        "encrypted-eval",
        "flows.encrypted_eval:encrypted_eval_flow",
        slowdown=False,
        numbered=False,
        fixed_model=True,
    ),
)

_BY_KEY: dict[str, Level] = {level.name: level for level in LEVELS}
_BY_KEY |= {str(level.number): level for level in LEVELS if level.numbered}


def _fedavg_span() -> str:
    numbers = [level.number for level in LEVELS if level.fedavg]
    return f"{min(numbers)}-{max(numbers)}"


def level_named(name: str, aggregation: str = "plain") -> Level:
    """The level called ``name``, as a run with ``aggregation`` runs it."""
    return _BY_KEY[name].as_run(aggregation)


def parse_levels(spec: str, aggregation: str = "plain") -> tuple[Level, ...]:
    """Parse ``baseline,1,2,2:secure,3`` (words or numbers) into levels, in run order.

    A FedAvg level without a suffix aggregates with ``aggregation`` (the
    ``--aggregation`` option). The baseline always runs first when present,
    because every other level's slowdown is measured against it; the remaining
    order and duplicates are normalised so the same set of levels always gives
    the same run (plain, then secure, then homomorphic aggregation).
    """
    keys = [part.strip().lower() for part in spec.split(",") if part.strip()]
    if not keys:
        raise ConfigError(f"no levels in {spec!r}: use e.g. baseline,1,2,3")
    chosen: set[Level] = set()
    for key in keys:
        name, _, suffix = key.partition(":")
        level = _BY_KEY.get(name)
        if level is None:
            valid = ", ".join(f"{lv.name}" for lv in LEVELS)
            numbers = [lv.number for lv in LEVELS if lv.numbered]
            raise ConfigError(
                f"unknown level {name!r}: choose from {valid} or {min(numbers)}-{max(numbers)}"
            )
        if suffix and suffix not in AGGREGATIONS:
            raise ConfigError(
                f"unknown aggregation {suffix!r} in level {key!r}: plain, secure or he"
            )
        chosen.add(level.with_aggregation(suffix) if suffix else level.as_run(aggregation))
    order = {None: 0, "plain": 0, "secure": 1, "he": 2}
    return tuple(sorted(chosen, key=lambda lv: (lv.number, order[lv.aggregation])))
