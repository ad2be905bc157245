"""Encrypted vs plaintext evaluation of the MPC-friendly CNN on the Fashion-MNIST test set.

Trains a quick ``mpc-cnn`` (plain PyTorch, a few thousand training images),
then evaluates it on the first ``--limit`` test images in this invocation,
``--runs`` times: each run is plain PyTorch inference (batch 1000, best of
``--repeats``, after a warm-up) followed by encrypted evaluation
(``mpc.protocols.encrypted_inference`` on remote shares) with a data owner, a
model owner and a dealer — three virtual workers in this process, or three
websocket worker processes on this host (``--transport websocket``) — and its
slowdown is the ratio of the two. The table gives the median run and the
range; the JSON every run's figures. The data owner's test images are sent to
it before the clock starts (a worker process loads training partitions only);
from then on they never leave it.

    .venv/bin/python benchmarks/encrypted_eval.py [--limit 10000] [--batch-size 250]
        [--transport virtual|websocket] [--runs 3] [--train-samples 6000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from provenance import run_facts
from table import write_table
from transports import workers_over

from fedsim.cli import quiet_defaults

quiet_defaults()

from fl.data import load_split  # noqa: E402
from fl.models import build_model, get_state  # noqa: E402
from fl.training import TrainConfig, train_local  # noqa: E402
from mpc.protocols.encrypted_inference.coordinator import encrypted_evaluate  # noqa: E402
from workers.memory import tune_malloc  # noqa: E402


def _plain(model: torch.nn.Module, x: torch.Tensor, batch: int) -> tuple[float, torch.Tensor]:
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        logits = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    return time.perf_counter() - start, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=10_000, help="test images")
    parser.add_argument("--batch-size", type=int, default=250, help="encrypted batch size")
    parser.add_argument("--transport", choices=("virtual", "websocket"), default="virtual")
    parser.add_argument("--worker-threads", type=int, default=1, help="torch threads a process")
    parser.add_argument("--train-samples", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="plaintext timings per run")
    parser.add_argument("--runs", type=int, default=3, help="plaintext + encrypted runs")
    parser.add_argument("--parallel", action="store_true", help="ask both parties at once")
    parser.add_argument(
        "--out-prefix", type=Path, default=Path("benchmarks/results/encrypted_eval")
    )
    args = parser.parse_args()
    tune_malloc()
    load_before = os.getloadavg()
    model = build_model("mpc-cnn", seed=0)
    train = load_split("fashion-mnist", train=True, limit=args.train_samples)
    config = TrainConfig(epochs=args.epochs, batch_size=32, lr=0.05)
    train_local(model, train, config, torch.Generator().manual_seed(0))
    state = get_state(model)
    test = load_split("fashion-mnist", train=False, limit=args.limit)
    _plain(model, test.x[:1000], 1000)  # warm-up, untimed
    n = len(test)

    runs: list[dict[str, Any]] = []
    roles = workers_over(args.transport, 3, threads=args.worker_threads)
    with roles as (data_owner, model_owner, dealer):
        images = data_owner.send(test.x)
        weights = {key: model_owner.send(value) for key, value in state.items()}
        for run in range(args.runs):
            # The data owner scores each image once per label set: a set per run.
            labels = data_owner.send(test.y)
            timed = [_plain(model, test.x, 1000) for _ in range(args.repeats)]
            plain_seconds = [seconds for seconds, _ in timed]
            plain_correct = int((timed[0][1].argmax(dim=1) == test.y).sum())
            result = encrypted_evaluate(
                data_owner=data_owner,
                model_owner=model_owner,
                dealer=dealer,
                images_id=images.id,
                labels_id=labels.id,
                weight_ids={key: pointer.id for key, pointer in weights.items()},
                batch_size=args.batch_size,
                parallel=args.parallel or args.transport == "websocket",
            )
            runs.append(
                {
                    "plaintext_seconds": plain_seconds,
                    "plaintext_correct": plain_correct,
                    "correct": result.correct,
                    "seconds": result.seconds,
                    "setup_seconds": result.setup_seconds,
                    "offline_seconds": result.offline_seconds,
                    "online_seconds": result.online_seconds,
                    "bytes_moved": result.bytes_moved,
                    "slowdown": result.seconds / min(plain_seconds),
                }
            )
            print(f"run {run + 1}/{args.runs}: {runs[-1]['slowdown']:.1f}×", flush=True)
    ordered = sorted(runs, key=lambda r: r["slowdown"])
    median = ordered[len(ordered) // 2]
    low, high = ordered[0]["slowdown"], ordered[-1]["slowdown"]
    facts = {
        **run_facts(load_before),
        "transport": args.transport,
        "images": n,
        "batch_size": args.batch_size,
        "runs": runs,
    }
    suffix = "" if args.transport == "virtual" else f"_{args.transport}"
    out = args.out_prefix.with_name(args.out_prefix.name + suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(facts, indent=1) + "\n")
    best = min(median["plaintext_seconds"])
    seconds = median["seconds"]
    rows = [
        ("images", f"{n}", f"{n}"),
        ("batch size", "1000", f"{args.batch_size}"),
        ("seconds (wall)", f"{best:.2f} (best of {args.repeats})", f"{seconds:.1f}"),
        ("images/s", f"{n / best:,.0f}", f"{n / seconds:,.0f}"),
        ("slowdown", "1×", f"**{median['slowdown']:.1f}×** (runs: {low:.1f}–{high:.1f}×)"),
        ("accuracy", f"{median['plaintext_correct'] / n:.2%}", f"{median['correct'] / n:.2%}"),
        ("waiting for tuples (s)", "—", f"{median['offline_seconds']:.1f}"),
        ("online seconds", "—", f"{median['online_seconds']:.1f}"),
        ("setup seconds (sharing the weights)", "—", f"{median['setup_seconds']:.2f}"),
        ("bytes moved", "0", f"{median['bytes_moved'] / 1e9:.2f} GB"),
    ]  # fmt: skip
    lines = [
        f"`{facts['command']}`",
        "",
        f"Encrypted evaluation of mpc-cnn on {n} Fashion-MNIST test images over "
        f"{args.transport} workers (data owner, model owner, dealer); commit "
        f"{facts['source']['commit']}{' (dirty)' if facts['source']['dirty'] else ''}, nproc "
        f"{facts['nproc']}, {facts['torch_threads']} torch threads here, load "
        f"{load_before[0]:.2f} before / {facts['load_after'][0]:.2f} after; {facts['date']}. "
        f"The median of {args.runs} runs (each: plaintext, then encrypted; slowdown = "
        "encrypted seconds / that run's best plaintext seconds), with the range. The data "
        "owner learns the predictions; the coordinator its count of correct ones. The "
        "dealer deals each batch while earlier ones run, so the online phase only waits "
        "for tuples it has not got.",
        "",
        "| | plaintext | encrypted |",
        "|---|---|---|",
        *[f"| {name} | {plain} | {enc} |" for name, plain, enc in rows],
    ]
    write_table(lines, out.with_suffix(".md"))


if __name__ == "__main__":
    main()
