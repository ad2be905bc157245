"""Benchmark: what secure aggregation (with and without SPDZ MACs) and CKKS
homomorphic aggregation add to a FedAvg round.

One benchmark run (real Prefect flows, MLflow) of level 2 with plain, secure
and homomorphic (``he``) aggregation and level 4 with ``he`` (encryption in parallel
worker processes), then one of level 2 with ``--mac``; all on the full
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
import time
from pathlib import Path
from typing import Any

from table import write_table

from fedsim.cli import exit_on_sigterm, quiet_defaults

quiet_defaults()
exit_on_sigterm()

from mlflow.tracking import MlflowClient  # noqa: E402

from fedsim.display import run_with_display  # noqa: E402
from fl.models import build_model, get_state  # noqa: E402
from flows.config import ExperimentConfig  # noqa: E402
from flows.tracking import tracking_uri  # noqa: E402
from mpc.protocols.secure_aggregation.coordinator import SecureInput, secure_average  # noqa: E402
from workers.virtual import VirtualWorker  # noqa: E402


def _history(run_id: str, metric: str) -> list[float]:
    client = MlflowClient(tracking_uri=tracking_uri())
    return [m.value for m in client.get_metric_history(run_id, metric)]


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
    run = summary["run_id"]
    protocol = _history(run, "secagg_seconds") or _history(run, "he_seconds") or [0.0]
    sharing = _history(run, "sharing_seconds") or _history(run, "he_encrypt_seconds") or [0.0]
    opening = _history(run, "opening_seconds") or _history(run, "he_decrypt_seconds") or [0.0]
    extra_mb = (summary["bytes_total"] - plain_bytes) / 1e6 / (args.rounds * args.workers)
    return (
        f"| {summary['run_name']} | {summary['final_accuracy']:.2%} | "
        f"{statistics.mean(rounds):.1f} | {statistics.mean(protocol):.2f} | "
        f"{statistics.mean(sharing):.2f} | {statistics.mean(opening):.2f} | "
        f"{100 * statistics.mean(protocol) / plain_round:.1f}% | {extra_mb:.1f} |"
    )


def scaling_table(counts: list[int]) -> list[str]:
    """Protocol-only cost (no training) for n clients, committee of 3 vs all n."""
    states = [get_state(build_model("cnn", seed=i)) for i in range(2)]
    lines = [
        "",
        "Protocol alone (virtual workers, McMahan CNN states, no training): committee of 3 "
        "vs sharing among all n.",
        "",
        "| clients n | committee k | protocol s | MB up per client | MB down per member |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in counts:
        for k in sorted({3, n}):
            # Members separate from the clients, so each side's traffic is measured alone.
            clients = [VirtualWorker(f"c{i}") for i in range(n)]
            members = [VirtualWorker(f"m{j}") for j in range(k)]
            inputs = [SecureInput(w, w.send(states[i % 2]), 100) for i, w in enumerate(clients)]
            uploaded = [w.bytes_received for w in clients]
            delivered = [w.bytes_sent for w in members]
            start = time.perf_counter()
            secure_average(inputs, members, states[0])
            seconds = time.perf_counter() - start
            client_mb = statistics.mean(
                w.bytes_received - b for w, b in zip(clients, uploaded, strict=True)
            )
            member_mb = statistics.mean(
                w.bytes_sent - b for w, b in zip(members, delivered, strict=True)
            )
            lines.append(
                f"| {n} | {k} | {seconds:.2f} | {client_mb / 1e6:.1f} | {member_mb / 1e6:.1f} |"
            )
    return lines


def _stored(parent: str) -> list[dict[str, Any]]:
    """The level summaries of a stored benchmark run, in run order."""
    client = MlflowClient(tracking_uri=tracking_uri())
    experiment = client.get_run(parent).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    summaries = [
        {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "final_accuracy": run.data.metrics["final_accuracy"],
            "bytes_total": run.data.metrics["bytes_total"],
            "start": run.info.start_time,
        }
        for run in runs
    ]
    return sorted(summaries, key=lambda summary: summary["start"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--scaling", default="4,8,16", help="client counts for the protocol table")
    parser.add_argument(
        "--runs",
        metavar="PARENT,PARENT",
        help="rebuild the table from two stored benchmark runs (plain+secure, then MAC)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/secure_aggregation.md")
    )
    args = parser.parse_args()
    if args.runs:
        first, with_mac = ({"levels": _stored(parent)} for parent in args.runs.split(","))
    else:
        first = run_with_display(_config(args, "2,2:secure,2:he,4:he", mac=False))
        with_mac = run_with_display(_config(args, "2:secure", mac=True))
    plain = first["levels"][0]
    plain_round = statistics.mean(_history(plain["run_id"], "round_seconds"))
    lines = [
        f"Fashion-MNIST ({args.train_samples or 'all 60,000'} train), McMahan CNN "
        f"(1,663,370 parameters), {args.workers} virtual workers, R={args.rounds} × E=2, "
        f"B=32, committee of 3, seed 0; 2 cores; {dt.date.today().isoformat()}. "
        "Overhead = protocol seconds per round / plain round seconds, same invocation.",
        "",
        "| level | test accuracy | round s | protocol s / round | sharing / encrypting s | "
        "opening / decrypting s | overhead | extra MB / client / round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for summary in (*first["levels"], with_mac["levels"][0]):
        row = _row(summary, plain_round, plain["bytes_total"], args)
        if summary is with_mac["levels"][0]:
            row = row.replace(summary["run_name"], summary["run_name"] + " + MAC", 1)
        lines.append(row)
    lines += scaling_table([int(n) for n in args.scaling.split(",")])
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
