"""Benchmark: baseline and levels 1-3 on the same work, in one invocation.

Runs the real benchmark flow (Prefect + MLflow) with identical settings for
every level and writes a markdown table of accuracy, training seconds,
slowdown against the baseline measured in the same run, and the seconds that
Prefect added to each level.

    .venv/bin/python benchmarks/levels.py                 # full Fashion-MNIST
    .venv/bin/python benchmarks/levels.py --train-samples 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
from pathlib import Path
from typing import Any

from fedsim.cli import exit_on_sigterm, quiet_defaults

quiet_defaults()
exit_on_sigterm()

import torch  # noqa: E402

from fedsim.display import run_with_display  # noqa: E402
from flows.config import PROFILES, ExperimentConfig  # noqa: E402
from flows.level import LEVELS  # noqa: E402

_RUN_NAMES = {level.name: level.run_name for level in LEVELS}


def markdown(cfg: ExperimentConfig, result: dict[str, Any]) -> str:
    """The README's table: one row per level."""
    lines = [
        f"Fashion-MNIST, {cfg.train_samples or 60_000} train / {cfg.test_samples or 10_000} test, "
        f"model `{cfg.model}`, {cfg.workers} workers, {cfg.partition.upper()}, "
        f"R={cfg.rounds} rounds × E={cfg.epochs}, B={cfg.batch_size}, lr={cfg.lr}, "
        f"C={cfg.fraction}, seed {cfg.seed}; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads; {dt.date.today().isoformat()}.",
        "",
        "| level | test accuracy | training s | slowdown vs baseline | Prefect s (share) | "
        "MB moved |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in result["levels"]:
        slowdown = s.get("slowdown_vs_baseline")
        share = s["prefect_seconds"] / max(s["train_seconds"], 1e-9)
        lines.append(
            f"| {_RUN_NAMES[s['level']]} | {s['final_accuracy']:.2%} | {s['train_seconds']:.1f} | "
            f"{'—' if slowdown is None else f'{slowdown:.3f}×'} | "
            f"{s['prefect_seconds']:.2f} ({share:.1%}) | {s['bytes_total'] / 1e6:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    full = PROFILES["full"]
    parser.add_argument("--rounds", type=int, default=full["rounds"])
    parser.add_argument("--epochs", type=int, default=full["epochs"])
    parser.add_argument("--workers", type=int, default=full["workers"])
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--test-samples", type=int, default=None)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--levels", default="baseline,1,2,3")
    parser.add_argument("--experiment", default="fedsim-benchmark")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/levels.md"))
    args = parser.parse_args()
    cfg = ExperimentConfig(
        **{
            **full,
            "profile": "full",
            "levels": args.levels,
            "rounds": args.rounds,
            "epochs": args.epochs,
            "workers": args.workers,
            "model": args.model,
            "train_samples": args.train_samples,
            "test_samples": args.test_samples,
            "experiment": args.experiment,
        }
    )
    result = run_with_display(cfg)
    table = markdown(cfg, result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
