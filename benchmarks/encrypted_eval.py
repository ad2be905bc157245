"""Encrypted vs plaintext evaluation of the MPC-friendly CNN on the Fashion-MNIST test set.

Trains a quick ``mpc-cnn`` (plain PyTorch, a few thousand training images),
then evaluates it on the first ``--limit`` test images twice in this process:
plain PyTorch inference (batch 1000, best of ``--repeats``) and encrypted
evaluation (``mpc.protocols.encrypted_inference``) on three in-process virtual workers,
and prints a markdown table: images/s, slowdown, accuracy both ways,
bytes moved, offline vs online seconds, and the expected number of
local-truncation failures for this model and these images.

    .venv/bin/python benchmarks/encrypted_eval.py [--limit 10000] [--batch-size 250]
        [--train-samples 6000] [--epochs 2] [--parallel] [--no-malloc-tuning] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fl.data import load_split
from fl.models import build_model, get_state
from fl.training import TrainConfig, train_local
from mpc.inference_layers import reference_forward
from mpc.protocols.encrypted_inference.coordinator import encrypted_evaluate
from workers.memory import tune_malloc
from workers.virtual import VirtualWorker


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
    parser.add_argument("--train-samples", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="plaintext timing repeats")
    parser.add_argument("--parallel", action="store_true", help="the dealer works one batch ahead")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument(
        "--no-malloc-tuning", action="store_true", help="keep glibc's default mmap thresholds"
    )
    args = parser.parse_args()
    tuned = False if args.no_malloc_tuning else tune_malloc()

    model = build_model("mpc-cnn", seed=0)
    train = load_split("fashion-mnist", train=True, limit=args.train_samples)
    config = TrainConfig(epochs=args.epochs, batch_size=32, lr=0.05)
    train_local(model, train, config, torch.Generator().manual_seed(0))
    state = get_state(model)
    test = load_split("fashion-mnist", train=False, limit=args.limit)

    plain_seconds, logits = min(
        (_plain(model, test.x, 1000) for _ in range(args.repeats)), key=lambda r: r[0]
    )
    plain_accuracy = float((logits.argmax(dim=1) == test.y).double().mean())
    _, expected_failures = reference_forward(state, test.x)

    result = encrypted_evaluate(
        state,
        test.x,
        test.y,
        data_owner=VirtualWorker("data-owner"),
        model_owner=VirtualWorker("model-owner"),
        dealer=VirtualWorker("dealer"),
        batch_size=args.batch_size,
        parallel=args.parallel,
    )
    agree = float((result.predictions == logits.argmax(dim=1)).double().mean())

    n = len(test)
    rows = [
        ("images", f"{n}", f"{n}"),
        ("batch size", "1000", f"{args.batch_size}"),
        ("seconds (wall)", f"{plain_seconds:.2f}", f"{result.seconds:.1f}"),
        ("images/s", f"{n / plain_seconds:,.0f}", f"{n / result.seconds:,.0f}"),
        ("slowdown", "1×", f"{result.seconds / plain_seconds:.1f}×"),
        ("accuracy", f"{plain_accuracy:.2%}", f"{result.accuracy:.2%}"),
        ("offline seconds (dealer + prepare)", "—", f"{result.offline_seconds:.1f}"),
        ("online seconds", "—", f"{result.online_seconds:.1f}"),
        ("online slowdown", "—", f"{result.online_seconds / plain_seconds:.1f}×"),
        ("setup seconds", "—", f"{result.setup_seconds:.2f}"),
        ("bytes moved", "0", f"{result.bytes_moved / 1e9:.2f} GB"),
        ("bytes per image", "0", f"{result.bytes_moved / n / 1e6:.2f} MB"),
    ]
    lines = [
        f"Encrypted evaluation of mpc-cnn on {n} Fashion-MNIST test images "
        f"({torch.get_num_threads()} torch threads, parallel={args.parallel}, "
        f"malloc tuned={tuned})",
        "",
        "| | plaintext | encrypted |",
        "|---|---|---|",
        *[f"| {name} | {plain} | {enc} |" for name, plain, enc in rows],
        "",
        f"Predictions agreeing with plaintext: {agree:.2%}; accuracy difference "
        f"{abs(result.accuracy - plain_accuracy) * 100:.2f} points; expected "
        f"local-truncation failures (bound): {expected_failures:.2e}.",
        "",
        "Seconds per step: "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(result.step_seconds.items())),
    ]
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
