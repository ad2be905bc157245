"""Benchmark: an epoch of logistic regression trained on shared data, against plaintext.

The Wisconsin breast-cancer set (455 training rows, 30 features; scikit-learn's
wheel ships it) is shared by a data owner among 2 or 3 parties, over virtual
workers and over websocket worker processes on this host; ``mpc.encrypted_training``
trains it by minibatch SGD (B = 32, lr = 0.01) for ``--epochs`` epochs. The
baseline is the same SGD with the same polynomial sigmoid in float64 torch,
timed in the same invocation. Reported per transport and party count: seconds
per epoch (median and range over the epochs), the ratio to plaintext, the loss
after each epoch and the test accuracy of the shared, the same-polynomial and
the true-sigmoid training.

    .venv/bin/python benchmarks/encrypted_training.py [--epochs 5] [--transports virtual,websocket]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from provenance import run_facts
from table import write_table
from transports import workers_over

from fedsim.cli import quiet_defaults

quiet_defaults()

from fl.tabular import breast_cancer  # noqa: E402
from mpc.encrypted_training import LogisticSGD, train_plain, train_shared  # noqa: E402
from mpc.protocols.remote_shares import COORDINATOR, ShareGroup  # noqa: E402
from workers.memory import tune_malloc  # noqa: E402


def _accuracy(weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    scores = x.double() @ weights[:-1] + weights[-1]
    return float(((scores > 0).double() == y.double()).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--transports", default="virtual,websocket")
    parser.add_argument(
        "--out-prefix", type=Path, default=Path("benchmarks/results/encrypted_training")
    )
    args = parser.parse_args()
    tune_malloc()  # as fedsim's CLI does
    load_before = os.getloadavg()
    data = breast_cancer(seed=0)
    one_epoch = LogisticSGD(epochs=1)
    rows: list[dict[str, Any]] = []
    for transport in args.transports.split(","):
        for parties in (2, 3):
            plain_seconds = []
            for _ in range(args.epochs):
                start = time.perf_counter()
                train_plain(data.x_train, data.y_train, one_epoch, exact=False)
                plain_seconds.append(time.perf_counter() - start)
            with workers_over(transport, parties + 2) as workers:
                owner, provider = workers[parties], workers[parties + 1]
                parallel = transport != "virtual"
                with ShareGroup(workers[:parties], provider, parallel=parallel) as group:
                    audience = [owner, COORDINATOR]
                    x = group.share(owner.send(data.x_train), audience=audience)
                    y = group.share(owner.send(data.y_train), audience=audience)
                    start = time.perf_counter()
                    model = train_shared(x, y, LogisticSGD(epochs=args.epochs), audience=audience)
                    total = time.perf_counter() - start
                    weights, bias = model.get()
            trained = torch.cat([weights, bias.reshape(1, 1)])
            sgd = LogisticSGD(epochs=args.epochs)
            poly = train_plain(data.x_train, data.y_train, sgd, exact=False)
            exact = train_plain(data.x_train, data.y_train, sgd, exact=True)
            rows.append(
                {
                    "transport": transport,
                    "parties": parties,
                    "shared_seconds_total": total,
                    "shared_seconds_per_epoch": total / args.epochs,
                    "plain_seconds_per_epoch": plain_seconds,
                    "losses": model.losses,
                    "accuracy": {
                        "shared": _accuracy(trained, data.x_test, data.y_test),
                        "plain_same_polynomial": _accuracy(poly, data.x_test, data.y_test),
                        "plain_true_sigmoid": _accuracy(exact, data.x_test, data.y_test),
                    },
                    "max_weight_difference_to_plain": float((trained - poly).abs().max()),
                }
            )
            print(f"{transport} {parties}P: {total / args.epochs:.2f} s/epoch", flush=True)
    facts = {
        **run_facts(load_before),
        "rows": rows,
    }
    args.out_prefix.parent.mkdir(parents=True, exist_ok=True)
    args.out_prefix.with_suffix(".json").write_text(json.dumps(facts, indent=1) + "\n")
    lines = [
        f"`{facts['command']}`",
        "",
        f"Breast cancer (455 training, 114 test rows, 30 features), logistic regression, "
        f"B = 32, lr = 0.01, {args.epochs} epochs, sigmoid as a degree-3 polynomial; the "
        f"data owner and the provider are workers apart from the parties; commit "
        f"{facts['source']['commit']}{' (dirty)' if facts['source']['dirty'] else ''}, nproc "
        f"{facts['nproc']}, load {load_before[0]:.2f} before / {facts['load_after'][0]:.2f} "
        f"after; {facts['date']}. Shared seconds per epoch are the whole run's over the "
        "epochs (the loss opened after each included); plaintext: the median and range "
        "of single-epoch runs.",
        "",
        "| transport | parties | shared s/epoch | plaintext ms/epoch (median, range) | × plaintext "
        "| loss by epoch | test accuracy: shared / same polynomial / true sigmoid |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        plain = row["plain_seconds_per_epoch"]
        median = statistics.median(plain)
        acc = row["accuracy"]
        lines.append(
            f"| {row['transport']} | {row['parties']} | {row['shared_seconds_per_epoch']:.2f} | "
            f"{median * 1e3:.1f} ({min(plain) * 1e3:.1f}–{max(plain) * 1e3:.1f}) | "
            f"{row['shared_seconds_per_epoch'] / median:,.0f}× | "
            f"{', '.join(f'{loss:.3f}' for loss in row['losses'])} | "
            f"{acc['shared']:.2%} / {acc['plain_same_polynomial']:.2%} / "
            f"{acc['plain_true_sigmoid']:.2%} |"
        )
    write_table(lines, args.out_prefix.with_suffix(".md"))


if __name__ == "__main__":
    main()
