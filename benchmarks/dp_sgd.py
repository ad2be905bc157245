"""Centralized DP-SGD (Abadi et al. 2016) on Fashion-MNIST: accuracy against ε.

Trains one model with :func:`fl.dp_training.train_local_dp` on the full train
split, one "epoch" (⌊1/q⌋ Poisson-sampled steps) at a time, and prints a
markdown row per epoch: ε at δ (Opacus RDP), test accuracy and wall seconds.
Stops before an epoch that would exceed ``--target-epsilon``. Target of the
issue: ≥ 80 % test accuracy at ε ≤ 3, δ = 1e-5.

    .venv/bin/python benchmarks/dp_sgd.py [--model cnn] [--epochs 5] [--batch-size 1024]
"""

from __future__ import annotations

import argparse
import time

import torch

from fl.data import load_split
from fl.dp_training import dp_sample_rate, dp_steps_per_epoch, train_local_dp
from fl.errors import FedsimError
from fl.models import build_model
from fl.noise import SecureNoise
from fl.privacy import DPConfig, PrivacyAccountant, check_budget
from fl.training import TrainConfig, evaluate


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=1024, help="expected Poisson batch size")
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--momentum", type=float, default=0.5)
    p.add_argument("--noise", type=float, default=1.0, help="noise multiplier z")
    p.add_argument("--clip", type=float, default=1.0, help="per-sample clip norm S")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--target-epsilon", type=float, default=3.0)
    p.add_argument("--limit", type=int, default=None, help="use the first N train samples")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    return p.parse_args()


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    train = load_split("fashion-mnist", train=True, data_dir=args.data_dir, limit=args.limit)
    test = load_split("fashion-mnist", train=False, data_dir=args.data_dir)
    model = build_model(args.model, seed=args.seed)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum)
    dp = DPConfig(
        mode="sample",
        noise_multiplier=args.noise,
        clip=args.clip,
        delta=args.delta,
        target_epsilon=args.target_epsilon,
    )
    q = dp_sample_rate(args.batch_size, len(train))
    steps = dp_steps_per_epoch(args.batch_size, len(train))
    # DP noise and Poisson batches from the CSPRNG (fl.noise); --seed fixes the model only.
    accountant, noise = PrivacyAccountant(dp.accountant), SecureNoise()
    print(
        f"{args.model}, N={len(train)}, q={q:.4g}, {steps} steps/epoch, z={args.noise}, "
        f"S={args.clip}, lr={args.lr}, momentum={args.momentum}, δ={args.delta}\n"
    )
    print("| epoch | ε | test accuracy | seconds |\n|---:|---:|---:|---:|", flush=True)
    elapsed = 0.0
    for epoch in range(1, args.epochs + 1):
        try:
            check_budget(accountant, dp, round_index=epoch, sample_rate=q, steps=steps)
        except FedsimError as exc:
            print(f"\n{exc}")
            break
        start = time.perf_counter()
        train_local_dp(model, train, config, dp, noise, accountant)
        elapsed += time.perf_counter() - start
        acc = evaluate(model, test).accuracy
        eps = accountant.epsilon(dp.delta)
        print(f"| {epoch} | {eps:.2f} | {100 * acc:.2f} % | {elapsed:.0f} |", flush=True)


if __name__ == "__main__":
    main()
