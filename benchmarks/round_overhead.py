"""Benchmark: what a whole FedAvg round costs with secure, secure + MAC and CKKS (he)
aggregation, against plain rounds measured in the same invocation.

Level 2 (virtual workers, FedAvg), McMahan CNN, the full Fashion-MNIST training
and test sets, 10 clients, E=1, B=32, lr 0.05, committee of 3, seed 0. Each
repeat runs one real benchmark flow (Prefect + MLflow, ``run_with_display``, as
``fedsim run`` does) per mode, the modes interleaved: plain, secure, mac, he,
plain, secure, ... so that drift on a shared machine hits every mode alike.

A round's time is read from the flow's own MLflow log: the round loop
(``flows.round_loop.run_rounds``) logs each round's metrics in one batch with one
time stamp, so stamp(r) - stamp(r-1) is round r end to end: client sampling,
local training, the aggregation protocol (its per-round key set-up included),
averaging, test-set evaluation, the MLflow call of round r-1 and the progress
line. Round 1 has no earlier stamp (its interval would hold the level's set-up)
and also builds models, so only rounds 2..R count: a run's figure is their mean
(R=2 by default: round 2 alone). The flows' ``round_seconds`` metric (training +
protocol + averaging, without evaluation and logging) is reported alongside.

    .venv/bin/python benchmarks/round_overhead.py [--repeats 5] [--workers 10] [--rounds 2]
    .venv/bin/python benchmarks/round_overhead.py --train-samples 2000 --test-samples 1000 \\
        --repeats 2 --workers 4 --out-prefix /tmp/round_overhead_smoke   # smoke

Targets (reported, not asserted): secure <= 1.05x, MAC <= 1.10x, he <= 1.25x plain.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from provenance import git_commit, source
from table import write_table

from fedsim.cli import exit_on_sigterm, quiet_defaults

quiet_defaults()
exit_on_sigterm()

import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from fedsim.display import run_with_display  # noqa: E402
from fedsim.prefect_server import prefect_api  # noqa: E402
from flows.config import ExperimentConfig  # noqa: E402
from flows.tracking import tracking_uri  # noqa: E402

# mode -> (levels, mac, target ratio of its median round to plain's)
MODES: dict[str, tuple[str, bool, float | None]] = {
    "plain": ("2", False, None),
    "secure": ("2:secure", False, 1.05),
    "mac": ("2:secure", True, 1.10),
    "he": ("2:he", False, 1.25),
}
_PROTOCOL_METRICS = ("secagg_seconds", "he_seconds")


def _config(args: argparse.Namespace, mode: str) -> ExperimentConfig:
    levels, mac, _ = MODES[mode]
    return ExperimentConfig(
        levels=levels,
        model="cnn",
        workers=args.workers,
        rounds=args.rounds,
        epochs=args.epochs,
        batch_size=32,
        lr=0.05,
        committee=3,
        mac=mac,
        profile="full",
        train_samples=args.train_samples,
        test_samples=args.test_samples,
        experiment=args.experiment,
    )


def _by_step(client: MlflowClient, run_id: str, metric: str) -> dict[int, Any]:
    return {m.step: m for m in client.get_metric_history(run_id, metric)}


def run_once(args: argparse.Namespace, mode: str, repeat: int) -> dict[str, Any]:
    """One benchmark flow of ``mode``; its rounds' times from the level's MLflow run."""
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = run_with_display(_config(args, mode))
    flow_seconds = time.perf_counter() - start
    (level,) = result["levels"]
    client = MlflowClient(tracking_uri=tracking_uri())
    stamps = _by_step(client, level["run_id"], "test_accuracy")  # logged every round
    flows_round = _by_step(client, level["run_id"], "round_seconds")
    protocol: dict[int, Any] = {}
    for name in _PROTOCOL_METRICS:
        protocol = protocol or _by_step(client, level["run_id"], name)
    steps = sorted(stamps)
    if steps != list(range(1, args.rounds + 1)):
        raise SystemExit(f"{mode}: the run logged rounds {steps}, expected 1..{args.rounds}")
    loop = {r: (stamps[r].timestamp - stamps[r - 1].timestamp) / 1000 for r in steps[1:]}
    return {
        "repeat": repeat,
        "mode": mode,
        "run_id": level["run_id"],
        "round_wall_seconds": statistics.mean(loop.values()),
        "loop_seconds_by_round": loop,
        "flows_round_seconds_by_round": {r: m.value for r, m in flows_round.items()},
        "protocol_seconds_by_round": {r: m.value for r, m in protocol.items()},
        "flows_round_seconds": statistics.mean(flows_round[r].value for r in steps[1:]),
        "level_wall_seconds": level["wall_seconds"],
        "prefect_seconds": level["prefect_seconds"],
        "flow_call_seconds": flow_seconds,
        "final_accuracy": level["final_accuracy"],
        "bytes_total": level["bytes_total"],
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def summarise(runs: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """Per mode: median, min, max of ``key``, its median over plain's median, and the
    median / min / max of each repeat's ratio to the plain run of the same repeat."""
    plain = {r["repeat"]: r[key] for r in runs if r["mode"] == "plain"}
    plain_median = statistics.median(plain.values())
    out = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        values = [r[key] for r in runs if r["mode"] == mode]
        paired = [r[key] / plain[r["repeat"]] for r in runs if r["mode"] == mode]
        out[mode] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "ratio_of_medians": statistics.median(values) / plain_median,
            "paired_ratio_median": statistics.median(paired),
            "paired_ratio_min": min(paired),
            "paired_ratio_max": max(paired),
        }
    return out


def _described(facts: dict[str, Any]) -> str:
    before, after = facts["source_before"], facts["source_after"]
    text = before["commit"] + (" + local changes" if before["dirty"] else "")
    return text if after == before else f"{text} (at the end: {after['commit']})"


def markdown(command: str, facts: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    args = facts["args"]
    lines = [
        f"`{command}`",
        "",
        f"Level 2, Fashion-MNIST ({args['train_samples'] or 'all 60,000'} train / "
        f"{args['test_samples'] or 'all 10,000'} test), McMahan CNN, {args['workers']} clients, "
        f"R={args['rounds']} × E={args['epochs']}, B=32, committee 3; {args['repeats']} repeats, "
        f"modes interleaved; commit {_described(facts)}, nproc {facts['nproc']}, "
        f"load {facts['load_before'][0]:.2f} before / {facts['load_after'][0]:.2f} after; "
        f"{facts['date']}.",
        "",
        "Round s: one round end to end (training, protocol with its key set-up, averaging, "
        "evaluation, MLflow logging), rounds 2..R, from the flow's MLflow time stamps. "
        "Paired: each repeat over the plain run of the same repeat. "
        "Flows' `round_seconds` (no evaluation or logging) in the last column.",
        "",
        "| mode | median round s | min–max s | × plain (medians) | paired × median "
        "(min–max) | target | flows' round_seconds × plain |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    wall, flows_round = summary["round_wall_seconds"], summary["flows_round_seconds"]
    for mode, s in wall.items():
        target = MODES[mode][2]
        lines.append(
            f"| {mode} | {s['median']:.2f} | {s['min']:.2f}–{s['max']:.2f} | "
            f"{s['ratio_of_medians']:.3f}× | {s['paired_ratio_median']:.3f}× "
            f"({s['paired_ratio_min']:.3f}–{s['paired_ratio_max']:.3f}) | "
            f"{'—' if target is None else f'≤ {target:.2f}×'} | "
            f"{flows_round[mode]['ratio_of_medians']:.3f}× |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="rounds 2..R are measured")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-samples", type=int, default=None, help="default: all")
    parser.add_argument("--test-samples", type=int, default=None, help="default: all")
    parser.add_argument("--modes", default=",".join(MODES), help="subset, plain always included")
    parser.add_argument("--experiment", default="fedsim-round-overhead-benchmark")
    parser.add_argument(
        "--out-prefix", type=Path, default=Path("benchmarks/results/round_overhead")
    )
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be >= 2: round 1 holds set-up and is not measured")
    modes = [m for m in MODES if m == "plain" or m in args.modes.split(",")]
    command = shlex.join([".venv/bin/python", *sys.argv])
    facts: dict[str, Any] = {
        "command": command,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "source_before": source(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "load_before": os.getloadavg(),
    }
    runs = []
    # One Prefect API server for every flow: run_with_display would start and stop
    # one per call, and Prefect's event client keeps the first one's address.
    with prefect_api(say=print):
        for repeat in range(1, args.repeats + 1):
            for mode in modes:
                runs.append(run_once(args, mode, repeat))
                print(f"repeat {repeat} {mode}: round {runs[-1]['round_wall_seconds']:.2f} s")
    facts["load_after"] = os.getloadavg()
    facts["source_after"] = source()
    summary = {key: summarise(runs, key) for key in ("round_wall_seconds", "flows_round_seconds")}
    raw = {**facts, "summary": summary, "runs": runs}
    json_path = args.out_prefix.with_suffix(".json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(raw, indent=1) + "\n")
    write_table(markdown(command, facts, summary), args.out_prefix.with_suffix(".md"))
    print(f"raw numbers: {json_path}")


if __name__ == "__main__":
    main()
