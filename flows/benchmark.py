"""The benchmark flow: the baseline, then each chosen level, under one MLflow parent run."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from prefect import flow

from fl.errors import FedsimError
from fl.task_fingerprint import task_fingerprint
from flows.config import ExperimentConfig
from flows.config_file import config_toml
from flows.engine import dask_task_runner
from flows.level import Level, parse_levels
from flows.parameters import ExperimentParameters, parameters_dict
from flows.progress import emit_link
from flows.tracking import BenchmarkTracker, status_after

__all__ = ["benchmark_flow", "describe", "run_level"]


def describe(cfg: ExperimentConfig) -> str:
    """One paragraph for the parent run's MLflow description."""
    levels = ", ".join(level.run_name for level in cfg.level_list)
    what = f"task {cfg.task}" if cfg.task else f"{cfg.dataset}, model {cfg.model}"
    return (
        f"fedsim benchmark ({cfg.profile} profile): {levels} on {what} "
        f"({cfg.train_samples or 'all'} train / {cfg.test_samples or 'all'} test samples), "
        f"{cfg.workers} workers, partition {cfg.partition}, "
        f"{cfg.rounds} rounds x {cfg.epochs} local epochs, B={cfg.batch_size}, lr={cfg.lr}, "
        f"C={cfg.fraction}, aggregation {cfg.aggregation}, seed {cfg.seed}."
    )


def run_level(
    level: Level,
    config: dict[str, Any],
    parent_run_id: str | None,
    baseline: dict[str, float] | None,
) -> dict[str, Any]:
    """Run the flow of ``level``; ``baseline`` holds the baseline's
    ``train_seconds`` and ``samples_trained`` once it has run."""
    flow: Any = level.load_flow()
    # The Prefect UI lists the run as "<experiment> · L2 federated (secure)".
    name = f"{config.get('experiment', 'fedsim')} · {level.run_name}"
    flow = flow.with_options(flow_run_name=lambda: name)
    if level.dask and config.get("task_runner") == "dask":
        runner = dask_task_runner(ExperimentConfig.from_dict(config), _prefect_api_url())
        flow = flow.with_options(task_runner=runner)
    result: dict[str, Any] = flow(config, parent_run_id, baseline)
    return result


def _prefect_api_url() -> str | None:
    """The Prefect API this process reports to (a temporary server's, if none is set)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url)


def _close_abandoned_runs(tracker: BenchmarkTracker) -> None:
    from flows.progress import emit_warning

    closed = tracker.close_abandoned_runs()
    if closed:
        emit_warning(
            f"marked {len(closed)} MLflow run(s) KILLED that an earlier fedsim process "
            f"left RUNNING when it died: {', '.join(closed)}"
        )


def _summary_metrics(level: Level, summary: dict[str, Any]) -> dict[str, float]:
    """A level's headline figures on the parent run, as ``<level key>/<metric>``
    (``federated:secure/final_accuracy``), so MLflow compares the levels of one run."""
    names = (
        "final_accuracy", "train_seconds", "slowdown_vs_baseline", "slowdown_vs_plaintext",
        "machine_other_cores",
    )  # fmt: skip
    return {
        f"{level.key}/{name}": float(summary[name])
        for name in (*names, "prefect_seconds")
        if summary.get(name) is not None
    }


def _benchmark_run_name() -> str:
    """The benchmark's flow run, named after its experiment and levels (scheduled
    runs of a deployment too)."""
    from prefect.runtime import flow_run

    config = parameters_dict(flow_run.parameters.get("config") or {})
    levels = str(config.get("levels", "?"))
    with contextlib.suppress(FedsimError):  # named as the MLflow parent run names them
        levels = ",".join(lv.key for lv in parse_levels(levels, config.get("aggregation", "plain")))
    return f"{config.get('experiment', 'fedsim')} · levels {levels}"


@flow(name="fedsim-benchmark", log_prints=False, flow_run_name=_benchmark_run_name)
def benchmark_flow(config: ExperimentParameters) -> dict[str, Any]:  # type: ignore[valid-type]  # a model made at import
    """Run the chosen levels one after another and log each as a child run.

    Returns ``{"parent_run_id": ..., "levels": [summary, ...], "report": path}``
    (``report``, the report.html path, is missing when the report could not be
    written; a warning says why); each summary
    carries ``prefect_seconds``: the level's wall time spent in Prefect rather
    than in its own code (flow-run set-up and tear-down plus task-call
    overhead), measured around the level's subflow call.
    """
    cfg = ExperimentConfig.from_dict(parameters_dict(config))
    from prefect.runtime import flow_run

    if flow_run.ui_url:  # a Prefect server with a UI: where to watch this run
        emit_link("Prefect flow run", str(flow_run.ui_url))
    tracker = BenchmarkTracker(cfg.experiment)
    _close_abandoned_runs(tracker)
    params = {  # an unset option is no param, not the string "None"
        k: str(v) for k, v in cfg.to_dict().items() if k not in ("tags", "levels") and v is not None
    }
    params |= {k: "all" for k in ("train_samples", "test_samples") if getattr(cfg, k) is None}
    if cfg.task is not None:  # the task replaces them: logging their defaults would mislead
        params = {k: v for k, v in params.items() if k not in ("dataset", "model")}
    params["levels"] = ",".join(level.key for level in cfg.level_list)
    levels = ",".join(level.key for level in cfg.level_list)
    parent = tracker.start_parent(f"levels {levels} ({cfg.profile})", params, describe(cfg))
    # The whole config as `fedsim run --config` reads it: the run, repeatable from a file.
    tracker.log_text(parent, config_toml(cfg), "experiment.toml")
    tracker.log_datasets(parent, cfg)
    tracker.set_tags(
        parent,
        {
            **cfg.tags,
            "fedsim.command": cfg.command(),
            "task_fingerprint": task_fingerprint(cfg.learning_task),
        },
    )
    summaries: list[dict[str, Any]] = []
    baseline: dict[str, float] | None = None
    try:
        for level in cfg.level_list:
            start = time.perf_counter()
            summary = run_level(level, cfg.for_level(level).to_dict(), parent, baseline)
            outer = time.perf_counter() - start
            summary["prefect_seconds"] = (
                max(outer - summary["body_seconds"], 0.0) + summary["task_overhead_seconds"]
            )
            tracker.log_metrics(
                summary["run_id"],
                {"prefect_seconds": summary["prefect_seconds"]},
                step=cfg.rounds,
            )
            tracker.log_metrics(parent, _summary_metrics(level, summary), step=cfg.rounds)
            if level.centralized:
                baseline = {k: summary[k] for k in ("train_seconds", "samples_trained")}
            summaries.append(summary)
    except BaseException as error:
        tracker.finish(parent, status=status_after(error))
        raise
    tracker.finish(parent)
    result: dict[str, Any] = {"parent_run_id": parent, "levels": summaries}
    # The report is a by-product: failing to write it must not lose the
    # benchmark, whose runs are already in MLflow (`fedsim report` can retry).
    # Imported here: matplotlib and pandas are only needed once the levels ran.
    from flows.progress import emit_warning

    try:
        from flows.report import publish_report

        files = publish_report(tracker.client, cfg.experiment, parent)
    except Exception as error:
        emit_warning(
            f"report not written ({type(error).__name__}: {error}); "
            f"retry with: fedsim report --experiment {cfg.experiment} --run {parent}"
        )
        return result
    result["report"] = str(files.html.resolve())
    return result
