"""Benchmark: client-level DP-FedAvg accuracy against ε (100 clients, fraction 0.1).

For each number of rounds R and target ε, the noise multiplier z that reaches
ε after R rounds of a fixed-size cohort (q = m/K = 0.1) at δ = 1e-5 is found by
bisection on the accountant fedsim uses for client-level DP (``fl.accounting``,
sampling without replacement, replace-one adjacency); the run then trains with
``--dp client`` and that z, and logs the ε the accountant actually reports. A run without DP, same
seed and clients, is the reference row. Every row is a real ``fedsim run``
(Prefect flow, MLflow runs) at level 2.

    .venv/bin/python benchmarks/privacy.py [--rounds 10,30] [--epsilons 1,4,8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import warnings
from pathlib import Path

from table import write_table

from fedsim.cli import exit_on_sigterm, quiet_defaults

quiet_defaults()
exit_on_sigterm()

from mlflow.tracking import MlflowClient  # noqa: E402

from fedsim.display import run_with_display  # noqa: E402
from fl.accounting import epsilon_after  # noqa: E402
from flows.config import ExperimentConfig  # noqa: E402
from flows.tracking import tracking_uri  # noqa: E402

DELTA = 1e-5


def _run(args: argparse.Namespace, rounds: int, **dp: object) -> tuple[float, float | None]:
    cfg = ExperimentConfig(
        levels="2",
        model=args.model,
        workers=100,
        fraction=0.1,
        rounds=rounds,
        epochs=1,
        batch_size=32,
        lr=args.lr,
        train_samples=None,
        test_samples=None,
        experiment="fedsim-privacy-benchmark",
        **dp,  # type: ignore[arg-type]
    )
    level = run_with_display(cfg)["levels"][0]
    history = MlflowClient(tracking_uri=tracking_uri()).get_metric_history(
        level["run_id"], "dp_epsilon"
    )
    epsilon = max((m.value for m in history), default=None)
    return level["final_accuracy"], epsilon


def _noise_for(target: float, rounds: int) -> float:
    """The smallest z (to 0.1 %) whose fixed-size-cohort ε after ``rounds`` is ≤ ``target``."""
    low, high = 0.05, 500.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus: "optimal order is the largest alpha"
        while high / low > 1.001:
            z = (low * high) ** 0.5
            eps = epsilon_after(rounds, z, 0.1, DELTA, sampling="fixed-size")
            low, high = (z, high) if eps > target else (low, z)
    return high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", default="10,30", help="round counts, comma-separated")
    parser.add_argument("--epsilons", default="1,4,8")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--clip", type=float, default=1.0, help="update clip norm S")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/privacy.md"))
    args = parser.parse_args()
    lines = [
        f"Fashion-MNIST (all 60,000 train, 10,000 test), {args.model}, 100 IID clients, "
        f"fraction 0.1 (10 per round), E=1, B=32, lr {args.lr}, update clip S={args.clip}, "
        f"δ={DELTA:g}, seed 0; {dt.date.today().isoformat()}.",
        "",
        "| rounds | target ε | noise z | ε reached (Opacus RDP) | test accuracy |",
        "|---:|---:|---:|---:|---:|",
    ]
    for rounds in (int(r) for r in args.rounds.split(",")):
        accuracy, _ = _run(args, rounds)
        lines.append(f"| {rounds} | no DP | — | — | {accuracy:.2%} |")
        for target in (float(e) for e in args.epsilons.split(",")):
            z = _noise_for(target, rounds)
            accuracy, reached = _run(args, rounds, dp="client", dp_noise=z, dp_clip=args.clip)
            shown = f"{reached:.2f}" if reached is not None else "—"
            lines.append(f"| {rounds} | {target:g} | {z:.3f} | {shown} | {accuracy:.2%} |")
            print("\n".join(lines), flush=True)
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
