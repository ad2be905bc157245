"""Terminal display of a benchmark run: rich progress per round, then a table."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flows.config import ExperimentConfig
from flows.level import LEVELS
from flows.progress import ProgressSink, use_sink

__all__ = ["RichProgressSink", "run_with_display", "summary_table"]

_RUN_NAMES = {level.name: level.run_name for level in LEVELS}


def _label(run_name: str) -> str:
    """A run name short enough for the 80-column table ("L5 ws-remote (secure)")."""
    for long, short in (("websocket-", "ws-"), (" (secure)", " (sec)")):
        if len(run_name) > 21:
            run_name = run_name.replace(long, short)
    return run_name


def _megabytes(count: float) -> str:
    megabytes = count / 1e6
    return f"{megabytes:.1f}" if megabytes < 1000 else f"{megabytes:.0f}"


class RichProgressSink(ProgressSink):
    """One progress bar per level, advanced per round with the latest accuracy."""

    def __init__(self, progress: Progress, *, show_links: bool = False) -> None:
        self.progress = progress
        self.show_links = show_links
        self.tasks: dict[str, Any] = {}

    def level_started(self, level: str, rounds: int) -> None:
        self.tasks[level] = self.progress.add_task(
            _label(_RUN_NAMES.get(level, level)), total=rounds, note=""
        )

    def round_finished(self, level: str, round_index: int, metrics: Mapping[str, float]) -> None:
        task = self.tasks[level]
        note = f"acc {metrics['test_accuracy']:.2%}  loss {metrics['train_loss']:.3f}"
        self.progress.update(task, completed=round_index, note=note)

    def warning(self, message: str) -> None:
        self.progress.console.print(f"[yellow]warning:[/yellow] {message}")

    def link(self, what: str, url: str) -> None:
        if self.show_links:  # a temporary server of this process has no UI to link to
            self.progress.console.print(f"{what}: {url}", soft_wrap=True)


def summary_table(result: Mapping[str, Any]) -> Table:
    """level | accuracy | training seconds | slowdown | Prefect seconds | MB moved."""
    table = Table(title="fedsim benchmark")
    # Short headers: the table must fit 80 columns (rich's width when piped).
    for header in ("level", "accuracy", "train s", "slowdown", "Prefect s", "MB"):
        table.add_column(header, justify="left" if header == "level" else "right", no_wrap=True)
    for s in result["levels"]:
        slowdown = s.get("slowdown_vs_baseline")
        versus_plaintext = s.get("slowdown_vs_plaintext")
        if versus_plaintext is not None:
            shown = f"{versus_plaintext:.1f}× pt"  # encrypted vs plaintext inference
        else:
            shown = "—" if slowdown is None else f"{slowdown:.2f}×"
        table.add_row(
            _label(s.get("run_name") or _RUN_NAMES.get(s["level"], s["level"])),
            f"{s['final_accuracy']:.2%}",
            f"{s['train_seconds']:.1f}",
            shown,
            f"{s['prefect_seconds']:.2f}",
            _megabytes(s["bytes_total"]),
        )
    return table


def run_with_display(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run the benchmark flow with live progress; print the summary table."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    from fedsim.prefect_server import prefect_api
    from flows.benchmark import benchmark_flow

    # A failing task re-raises into the CLI, which prints one line for expected
    # errors and the traceback for bugs; Prefect's own copy on the terminal would
    # only repeat it. With the user's server the run loggers still send to it
    # (their own handler), so its UI keeps the round lines and errors; a temporary
    # server has no UI and dies with a Ctrl-C before queued lines are sent, which
    # Prefect would report on the terminal ("Error logging to API").
    configured = bool(PREFECT_API_URL.value())
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        if configured:
            logging.getLogger(name).propagate = False
        else:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    console = Console()
    console.print(f"[bold]fedsim run[/bold] — profile {cfg.profile}, levels {cfg.levels}")
    columns = (
        TextColumn("{task.description:<20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
    )
    # Heartbeats let a Prefect server notice a crashed run; an interactive run
    # has no such server, and each flow run would wait ~1 s for its heartbeat
    # thread to stop.
    with (
        prefect_api(say=lambda line: console.print(f"[dim]{line}[/dim]")),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        Progress(*columns, console=console) as bar,
        use_sink(RichProgressSink(bar, show_links=configured)),
    ):
        result: dict[str, Any] = benchmark_flow(cfg.to_dict())
    console.print(summary_table(result))
    console.print(f"MLflow parent run {result['parent_run_id']} in experiment {cfg.experiment!r}")
    if result.get("report"):
        console.print(f"report: {result['report']}", soft_wrap=True)
    return result
