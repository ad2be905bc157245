"""Benchmark: levels 4 and 5 (websocket workers) against the baseline, for 2, 4 and 8 workers.

For each worker count, one benchmark run (real Prefect flows, MLflow) of the
baseline, level 3 (same work on in-process workers) and levels 4 and 5; level
5's workers are TLS daemons on 127.0.0.2, 127.0.0.3, ... started before the run
exactly as ``make run`` does. Slowdown is measured against the baseline of the
same run.

    .venv/bin/python benchmarks/websocket_levels.py [--workers 2,4,8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

from table import write_table

from fedsim.cli import exit_on_sigterm, quiet_defaults

quiet_defaults()
exit_on_sigterm()

from fedsim.display import run_with_display  # noqa: E402
from fedsim.local_fleet import fleet_down, fleet_up  # noqa: E402
from flows.config import ExperimentConfig  # noqa: E402
from flows.level import LEVELS  # noqa: E402

_RUN_NAMES = {level.name: level.run_name for level in LEVELS}


def _run(workers: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    fleet_args = argparse.Namespace(
        dir=str(folder),
        workers=workers,
        dataset="fashion-mnist",
        data_dir=None,
        partition="iid",
        seed=0,
        train_samples=args.train_samples,
    )
    fleet_up(fleet_args)
    try:
        cfg = ExperimentConfig(
            levels="baseline,3,4,5",
            model="cnn",
            workers=workers,
            rounds=args.rounds,
            epochs=1,
            batch_size=32,
            lr=0.05,
            train_samples=args.train_samples,
            test_samples=2_000,
            experiment="fedsim-websocket-benchmark",
            workers_file=str(folder / "workers.toml"),
        )
        return run_with_display(cfg)
    finally:
        fleet_down(fleet_args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=12_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/websocket.md"))
    args = parser.parse_args()
    lines = [
        f"Fashion-MNIST, {args.train_samples} train / 2000 test, McMahan CNN, IID, "
        f"R={args.rounds} × E=1, B=32, lr=0.05, seed 0; 2 cores; "
        f"{dt.date.today().isoformat()}. Level 5 = TLS + HMAC authentication on loopback.",
        "",
        "| workers | level | test accuracy | training s | slowdown vs baseline | "
        "comm s / round | MB moved |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for count in (int(c) for c in args.workers.split(",")):
        with tempfile.TemporaryDirectory(prefix="fedsim-l5-") as tmp:
            result = _run(count, args, Path(tmp))
        for s in result["levels"]:
            comm = s.get("comm_seconds_mean")
            lines.append(
                f"| {count} | {_RUN_NAMES[s['level']]} | {s['final_accuracy']:.2%} | "
                f"{s['train_seconds']:.1f} | {s['slowdown_vs_baseline']:.3f}× | "
                f"{'—' if comm is None else f'{comm:.2f}'} | {s['bytes_total'] / 1e6:.0f} |"
            )
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
