"""Benchmark: final accuracy of each robust aggregator under each simulated attack.

Every cell is one real ``fedsim run --profile robustness`` (Prefect flow, MLflow
runs): Fashion-MNIST, 10 IID clients at level 2, of which ``--attackers`` run
the attack of the row (none: a clean run), aggregated by the column's
aggregator. Cells show the final test accuracy and, for attacked runs, the mean
recall of the flagged set over the rounds (did the suspicion score name the
attackers?). The same seed everywhere: cells differ only by attack and defence.

    .venv/bin/python benchmarks/robustness.py [--rounds 5] [--train-samples 12000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
from pathlib import Path
from typing import Any

from table import write_table

from fedsim.cli import exit_on_sigterm, quiet_defaults

quiet_defaults()
exit_on_sigterm()

from mlflow.tracking import MlflowClient  # noqa: E402

from fedsim.display import run_with_display  # noqa: E402
from flows.config import PROFILES, ExperimentConfig  # noqa: E402
from flows.tracking import tracking_uri  # noqa: E402

ATTACKS = "none,label-flip,sign-flip,noise,scale,alie"
AGGREGATORS = "fedavg,median,trimmed-mean:0.2,krum:2,multi-krum:2:6"


def _cell(args: argparse.Namespace, attack: str, aggregator: str) -> dict[str, Any]:
    profile = PROFILES["robustness"]
    cfg = ExperimentConfig(
        **{
            **profile,
            "profile": "robustness",
            "rounds": args.rounds,
            "train_samples": args.train_samples,
            "attack": attack,
            "attackers": 0 if attack == "none" else args.attackers,
            "aggregator": aggregator,
            "experiment": "fedsim-robustness-benchmark",
        }
    )
    level = run_with_display(cfg)["levels"][0]
    client = MlflowClient(tracking_uri=tracking_uri())
    recall = [m.value for m in client.get_metric_history(level["run_id"], "flag_recall")]
    precision = [m.value for m in client.get_metric_history(level["run_id"], "flag_precision")]
    return {
        "accuracy": level["final_accuracy"],
        "recall": statistics.mean(recall) if recall else None,
        "precision": statistics.mean(precision) if precision else None,
    }


def _format(cell: dict[str, Any]) -> str:
    text = f"{cell['accuracy']:.1%}"
    if cell["recall"] is not None:
        text += f" (R {cell['recall']:.2f}, P {cell['precision']:.2f})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=PROFILES["robustness"]["rounds"])
    parser.add_argument(
        "--train-samples", type=int, default=PROFILES["robustness"]["train_samples"]
    )
    parser.add_argument("--attackers", type=int, default=2)
    parser.add_argument("--attacks", default=ATTACKS)
    parser.add_argument("--aggregators", default=AGGREGATORS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/robustness.md"))
    args = parser.parse_args()
    attacks, aggregators = args.attacks.split(","), args.aggregators.split(",")
    lines = [
        f"Fashion-MNIST ({args.train_samples} train, 2,000 test), McMahan CNN, 10 IID clients "
        f"at level 2, {args.attackers} attackers, R={args.rounds} × E=1, B=32, lr 0.05, "
        f"seed 0; {dt.date.today().isoformat()}. Cell: final test accuracy "
        "(R/P: mean recall/precision of the flagged clients over the rounds).",
        "",
        "| attack | " + " | ".join(aggregators) + " |",
        "|---|" + "---:|" * len(aggregators),
    ]
    for attack in attacks:
        cells = [_format(_cell(args, attack, aggregator)) for aggregator in aggregators]
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
        print("\n".join(lines), flush=True)
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
