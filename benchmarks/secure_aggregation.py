"""Benchmark: what secure aggregation (and its SPDZ MACs) adds to a FedAvg round.

One benchmark run (real Prefect flows, MLflow) of level 2 with plain and with
secure aggregation, then one of level 2 with ``--mac``; all on the full
Fashion-MNIST training set, McMahan CNN (1.7 M parameters), 10 workers, E=2,
a committee of 3. The overhead of a round is its secure-aggregation protocol
time (``secagg_seconds``, logged per round) over the plain level's mean round
time in the same invocation.

    .venv/bin/python benchmarks/secure_aggregation.py [--rounds 2] [--workers 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
from pathlib import Path
from typing import Any

from fedsim.cli import exit_on_sigterm, quiet_defaults

quiet_defaults()
exit_on_sigterm()

from mlflow.tracking import MlflowClient  # noqa: E402

from fedsim.display import run_with_display  # noqa: E402
from flows.config import ExperimentConfig  # noqa: E402


def _history(run_id: str, metric: str) -> list[float]:
    return [m.value for m in MlflowClient().get_metric_history(run_id, metric)]


def _config(args: argparse.Namespace, levels: str, mac: bool) -> ExperimentConfig:
    return ExperimentConfig(
        levels=levels,
        model="cnn",
        workers=args.workers,
        rounds=args.rounds,
        epochs=2,
        batch_size=32,
        lr=0.05,
        committee=3,
        mac=mac,
        profile="full",
        train_samples=args.train_samples,
        test_samples=None,
        experiment="fedsim-secure-aggregation-benchmark",
    )


def _row(summary: dict[str, Any], plain_round: float, plain_bytes: float, args: Any) -> str:
    rounds = _history(summary["run_id"], "round_seconds")
    protocol = _history(summary["run_id"], "secagg_seconds") or [0.0]
    sharing = _history(summary["run_id"], "sharing_seconds") or [0.0]
    opening = _history(summary["run_id"], "opening_seconds") or [0.0]
    extra_mb = (summary["bytes_total"] - plain_bytes) / 1e6 / (args.rounds * args.workers)
    return (
        f"| {summary['run_name']} | {summary['final_accuracy']:.2%} | "
        f"{statistics.mean(rounds):.1f} | {statistics.mean(protocol):.2f} | "
        f"{statistics.mean(sharing):.2f} | {statistics.mean(opening):.2f} | "
        f"{100 * statistics.mean(protocol) / plain_round:.1f}% | {extra_mb:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/secure_aggregation.md")
    )
    args = parser.parse_args()
    first = run_with_display(_config(args, "2,2:secure", mac=False))
    with_mac = run_with_display(_config(args, "2:secure", mac=True))
    plain = first["levels"][0]
    plain_round = statistics.mean(_history(plain["run_id"], "round_seconds"))
    lines = [
        f"Fashion-MNIST ({args.train_samples or 'all 60,000'} train), McMahan CNN "
        f"(1,663,370 parameters), {args.workers} virtual workers, R={args.rounds} × E=2, "
        f"B=32, committee of 3, seed 0; 2 cores; {dt.date.today().isoformat()}. "
        "Overhead = protocol seconds per round / plain round seconds, same invocation.",
        "",
        "| level | test accuracy | round s | protocol s / round | sharing s | opening s | "
        "overhead | extra MB / client / round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for summary in (plain, first["levels"][1], with_mac["levels"][0]):
        row = _row(summary, plain_round, plain["bytes_total"], args)
        if summary is with_mac["levels"][0]:
            row = row.replace(summary["run_name"], summary["run_name"] + " + MAC", 1)
        lines.append(row)
    table = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
