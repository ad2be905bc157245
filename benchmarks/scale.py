"""Benchmark: many simulated clients, in process and on a 2-process Dask LocalCluster.

Each cell is one real ``fedsim run --levels 3`` in its own process (Prefect flow,
MLflow runs): full Fashion-MNIST, the McMahan CNN, E=1, with ``--workers``
clients of which ``--fraction`` train per round, for ``--rounds`` rounds; once
with ``--task-runner local`` and once with ``--task-runner dask`` (LocalCluster of
2 processes). The baseline (centralized PyTorch, one epoch) runs in the same
invocation, first; slowdown compares seconds per trained sample with it.

Columns:

- *wall s*: the whole ``fedsim run`` command, start-up (Prefect's temporary
  server, the Dask cluster) and evaluation included; *train s*: its rounds.
- *s / client*: training seconds per sampled client (rounds' wall time over
  clients × rounds).
- *overhead ms / client*: core-seconds per sampled client beyond the clients'
  own training loops — ``(train_seconds × 2 − Σ client training seconds) /
  clients``, the 2 being the batches training at once — i.e. model transfer,
  (de)coding, FedAvg folding, Prefect and Dask, and idle cores.
- *orchestration*: Prefect's share of the level's wall time (flow set-up and
  task-call overhead, measured by the flow on every run).
- *peak MB*: the largest resident memory of the whole process tree (the CLI,
  Prefect's temporary API server, Dask's scheduler and workers), sampled every
  0.1 s; shared library pages count once per process.

Engine *plain* is no fedsim run: ``benchmarks/plain_fedavg.py``, the same
clients' FedAvg written by hand in plain PyTorch (two threads, no workers or
messages), so that the table separates what federated training of small
clients costs from what fedsim adds to it.

The machine's speed drifts by several percent over minutes, so the whole set
runs ``--repeats`` times, each repeat with its own baseline first; the table
gives medians and the slowdown's range.

    .venv/bin/python benchmarks/scale.py [--rounds 2] [--repeats 3]
        [--cells 1000:0.01,1000:0.1,1000:1,100:0.1] [--engines local,dask,plain]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from table import write_table

from fedsim.cli import quiet_defaults

quiet_defaults()

from mlflow.tracking import MlflowClient  # noqa: E402

from flows.resources import tree_rss_bytes  # noqa: E402
from flows.tracking import tracking_uri  # noqa: E402

EXPERIMENT = "fedsim-scale-benchmark"
FEDSIM = str(Path(sys.executable).with_name("fedsim"))
PARENT = re.compile(r"MLflow parent run ([0-9a-f]{32})")


class PeakTreeMemory:
    """Samples the summed RSS of a process and its descendants in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, tree_rss_bytes(self.pid))
            except psutil.Error:  # the command has exited
                return
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_cell(options: list[str]) -> dict[str, Any]:
    """One ``fedsim run`` in a child process; its level summary, metrics and peak memory."""
    command = [FEDSIM, "run", "--profile", "full", "--epochs", "1", "--experiment", EXPERIMENT]
    start = time.perf_counter()
    child = subprocess.Popen(command + options, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    memory = PeakTreeMemory(child.pid)
    output, _ = child.communicate()
    peak = memory.stop()
    wall = time.perf_counter() - start
    text = output.decode(errors="replace")
    match = PARENT.search(text)
    if child.returncode != 0 or match is None:
        raise SystemExit(f"fedsim run {' '.join(options)} failed:\n{text[-3000:]}")
    client = MlflowClient(tracking_uri())
    parent = client.get_run(match.group(1))
    [run] = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{match.group(1)}'"
    )

    def total(key: str) -> float:
        return sum(m.value for m in client.get_metric_history(run.info.run_id, key))

    metrics = run.data.metrics
    return {
        "command_seconds": wall,
        "peak_mb": peak / 2**20,
        "train_seconds": metrics["train_seconds"],
        "wall_seconds": metrics["wall_seconds"],
        "prefect_seconds": metrics.get("prefect_seconds", 0.0),
        "samples": metrics["samples_trained"],
        "accuracy": metrics["final_accuracy"],
        "compute_seconds": total("client_compute_seconds"),
        "clients": total("clients_sampled"),
        "model_copies": max(
            (m.value for m in client.get_metric_history(run.info.run_id, "model_copies")),
            default=0.0,
        ),
    }


def run_plain(workers: str, fraction: str, rounds: int) -> dict[str, Any]:
    """``plain_fedavg.py`` — the same clients' FedAvg written by hand — in a child process."""
    command = [sys.executable, str(Path(__file__).with_name("plain_fedavg.py"))]
    command += ["--workers", workers, "--fraction", fraction, "--rounds", str(rounds)]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    memory = PeakTreeMemory(child.pid)
    output, _ = child.communicate()
    peak = memory.stop()
    text = output.decode(errors="replace")
    if child.returncode != 0:
        raise SystemExit(f"plain_fedavg.py {workers}:{fraction} failed:\n{text[-3000:]}")
    result = json.loads(text.strip().splitlines()[-1])
    clients = max(round(float(fraction) * int(workers)), 1) * rounds
    return {
        "command_seconds": time.perf_counter() - start,
        "peak_mb": peak / 2**20,
        "train_seconds": result["train_seconds"],
        "samples": result["samples"],
        "accuracy": result["accuracy"],
        "clients": clients,
        "overhead_ms": float("nan"),  # no per-client training seconds are measured
        "orchestration": 0.0,
        "model_copies": 2.0,
    }


def _row(engine: str, workers: str, rounds: int, runs: list[dict[str, Any]]) -> str:
    """One table row: medians over the repeats, and the slowdown's range."""
    clients = runs[0]["clients"]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    slowdowns = sorted(r["slowdown"] for r in runs)
    spread = f" ({slowdowns[0]:.2f}–{slowdowns[-1]:.2f})" if len(runs) > 1 else ""
    plain = engine == "plain"  # no Prefect, no per-client training seconds
    overhead = "—" if plain else f"{median('overhead_ms'):.1f}"
    orchestration = "—" if plain else f"{median('orchestration'):.1%}"
    return (
        f"| {engine} | {workers} | {clients / rounds:.0f} "
        f"| {median('command_seconds'):.1f} | {median('train_seconds'):.1f} "
        f"| {median('train_seconds') / clients:.3f} | {overhead} "
        f"| {orchestration} | {median('peak_mb'):.0f} "
        f"| {max(r['model_copies'] for r in runs):.0f} "
        f"| {statistics.median(slowdowns):.2f}×{spread} | {runs[0]['accuracy']:.2%} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cells", default="1000:0.01,1000:0.1,1000:1,100:0.1")
    parser.add_argument("--engines", default="local,dask,plain")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.md"))
    args = parser.parse_args()

    cells = [
        (engine, *cell.split(":"))
        for cell in args.cells.split(",")
        for engine in args.engines.split(",")
    ]
    baselines: list[dict[str, Any]] = []
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {cell: [] for cell in cells}
    for repeat in range(1, args.repeats + 1):
        # Each repeat measures its own baseline first and compares its cells
        # with it: a machine's speed drifts over minutes (docs/scale.md, "Measured").
        print(f"repeat {repeat}: baseline, one centralized epoch", flush=True)
        base = run_cell(["--levels", "baseline", "--rounds", "1"])
        per_sample = base["train_seconds"] / base["samples"]
        baselines.append(base)
        for engine, workers, fraction in cells:
            if engine == "plain":
                r = run_plain(workers, fraction, args.rounds)
            else:
                r = run_cell(
                    ["--levels", "3", "--workers", workers, "--fraction", fraction,
                     "--rounds", str(args.rounds), "--task-runner", engine]
                )  # fmt: skip
                r["overhead_ms"] = (
                    (r["train_seconds"] * 2 - r["compute_seconds"]) / r["clients"] * 1e3
                )
                r["orchestration"] = r["prefect_seconds"] / r["wall_seconds"]
            r["slowdown"] = (r["train_seconds"] / r["samples"]) / per_sample
            results[(engine, workers, fraction)].append(r)
            print(f"  {engine} {workers}:{fraction} slowdown {r['slowdown']:.2f}×", flush=True)

    base_seconds = sorted(b["train_seconds"] for b in baselines)
    lines = [
        f"# Scale: many clients ({dt.date.today()}, "
        f"`benchmarks/scale.py --rounds {args.rounds} --repeats {args.repeats}`)",
        "",
        "Full Fashion-MNIST, McMahan CNN, E=1, B=32, level 3. Baseline: one centralized "
        f"epoch, {statistics.median(base_seconds):.1f} s (median of {len(base_seconds)}: "
        f"{base_seconds[0]:.1f}–{base_seconds[-1]:.1f} s), peak "
        f"{statistics.median(b['peak_mb'] for b in baselines):.0f} MB. Each repeat runs its "
        "baseline, then every cell; slowdowns are against that repeat's baseline. Cells show "
        "medians over the repeats, and the slowdown's range. Engine *plain* is not fedsim: "
        "`benchmarks/plain_fedavg.py`, the same clients' FedAvg written by hand in plain "
        "PyTorch.",
        "",
        "| engine | clients | per round | wall s | train s | s / client | overhead ms / client "
        "| orchestration | peak MB | models | slowdown | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (engine, workers, _), runs in results.items():
        lines.append(_row(engine, workers, args.rounds, runs))
        print(lines[-1], flush=True)
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
