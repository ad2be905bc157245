"""The report's data: one parent MLflow run and its level runs, read into pandas.

Only what MLflow stored goes in (never in-memory results), so a report built
months later from the same runs is the same (``flows.report``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fl.errors import ConfigError
from flows.defence import DP_PRIVATE_TAG
from flows.level import LEVELS
from flows.report_plots import LevelSeries
from flows.tracking import tracking_uri

__all__ = ["ReportData", "find_parent_run", "load_report_data"]

_NUMBERS = {level.name: level.number for level in LEVELS}
_HISTORY = ("test_accuracy", "test_loss", "train_loss", "bytes_sent", "bytes_received")


@dataclass(frozen=True)
class ReportData:
    """What the report shows: the parent run, one row per level, the curves."""

    experiment: str
    parent: Run
    levels: pd.DataFrame  # one row per child run, in report order
    series: tuple[LevelSeries, ...]


def _experiment_id(client: MlflowClient, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return str(found.experiment_id)
    names = sorted(e.name for e in client.search_experiments(max_results=50))
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise ConfigError(
        f"no MLflow experiment {experiment!r} at {client.tracking_uri}; existing: {shown or 'none'}"
    )


def find_parent_run(client: MlflowClient, experiment: str, run_id: str | None) -> Run:
    """The parent run ``run_id`` of ``experiment``, or its latest benchmark run."""
    experiment_id = _experiment_id(client, experiment)
    if run_id is None:
        query, latest = "tags.kind = 'benchmark'", ["attributes.start_time DESC"]
        runs = client.search_runs([experiment_id], query, order_by=latest, max_results=1)
        if not runs:
            raise ConfigError(f"experiment {experiment!r} has no benchmark runs: run `fedsim run`")
        return runs[0]
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no MLflow run {run_id!r} in experiment {experiment!r}") from None
    if run.info.experiment_id != experiment_id:
        raise ConfigError(f"run {run_id!r} is not in experiment {experiment!r}")
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent:
        raise ConfigError(f"run {run_id!r} is a level run; pass its parent run {parent!r}")
    return run


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """step → value; a step logged twice keeps its latest value."""
    metrics = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return {int(m.step): float(m.value) for m in metrics}


def _level_number(run: Run) -> int:
    number = _NUMBERS.get(run.data.tags.get("level", ""))
    if number is not None:
        return number
    found = re.match(r"L(\d+)\b", run.info.run_name or "")
    return int(found.group(1)) if found else 99


def _level_record(client: MlflowClient, run: Run) -> tuple[dict[str, Any], LevelSeries]:
    """One summary-table row and the curves of one child run."""
    metrics, params = run.data.metrics, run.data.params
    curves = {key: _history(client, run.info.run_id, key) for key in _HISTORY}
    dropped = _history(client, run.info.run_id, "dropped_workers")
    rounds = sorted(curves["test_accuracy"])
    label = run.info.run_name or run.data.tags.get("level", run.info.run_id)
    sent, received = curves["bytes_sent"], curves["bytes_received"]
    record = {
        "run_id": run.info.run_id,
        "run_name": label,
        "number": _level_number(run),
        "secure": {"secure": 1, "he": 2}.get(params.get("aggregation", ""), 0),
        "aggregation": params.get("aggregation", "none"),
        "seed": params.get("seed"),
        "final_accuracy": metrics.get("final_accuracy"),
        "train_seconds": metrics.get("train_seconds"),
        "slowdown_vs_baseline": metrics.get("slowdown_vs_baseline"),
        "bytes_total": metrics.get("bytes_total"),
        "dp_epsilon": metrics.get("dp_epsilon"),
        "dp_private": run.data.tags.get(DP_PRIVATE_TAG),  # "false": reproducible noise seed
        "aggregator": params.get("aggregator"),
        "attack": _attack(params),
        "flag_recall": _mean(_history(client, run.info.run_id, "flag_recall")),
        "dropped_workers": sum(dropped.values()) if dropped else None,
        "slowdown_vs_plaintext": metrics.get("slowdown_vs_plaintext"),
        "machine_other_cores": metrics.get("machine_other_cores"),
        "plaintext_accuracy": metrics.get("plaintext_accuracy"),
    }
    series = LevelSeries(
        label=label,
        rounds=rounds,
        test_accuracy=[curves["test_accuracy"][r] for r in rounds],
        test_loss=[curves["test_loss"].get(r, float("nan")) for r in rounds],
        train_loss=[curves["train_loss"].get(r, float("nan")) for r in rounds],
        bytes_per_round=[sent.get(r, 0.0) + received.get(r, 0.0) for r in rounds],
        slowdown=metrics.get("slowdown_vs_baseline"),
    )
    return record, series


def _attack(params: dict[str, str]) -> str | None:
    attack = params.get("attack", "none")
    return None if attack == "none" else f"{attack} ×{params.get('attackers', '?')}"


def _mean(series: dict[int, float]) -> float | None:
    return sum(series.values()) / len(series) if series else None


def load_report_data(
    experiment: str, parent_run_id: str | None, client: MlflowClient | None = None
) -> ReportData:
    """Read the parent run and its level runs from MLflow, in report order.

    Order: level number, plain before secure, then run name — the order of
    ``--levels`` after normalisation, independent of MLflow's search order.
    """
    client = client or MlflowClient(tracking_uri=tracking_uri())
    parent = find_parent_run(client, experiment, parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        max_results=1000,
    )
    pairs = [_level_record(client, run) for run in children]
    pairs.sort(key=lambda p: (p[0]["number"], p[0]["secure"], p[0]["run_name"], p[0]["run_id"]))
    frame = pd.DataFrame.from_records([record for record, _ in pairs])
    return ReportData(experiment, parent, frame, tuple(series for _, series in pairs))
