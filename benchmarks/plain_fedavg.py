"""A hand-written FedAvg in plain PyTorch: the reference fedsim's scale cells are read against.

``benchmarks/scale.py`` compares ``fedsim run --levels 3`` with the centralized
baseline, as docs/design.md ("Slowdown") defines slowdown. Part of that gap is not fedsim's: with
1,000 clients of 60 samples, FL itself trains in batches of 32 and 28, starts a
fresh optimizer per client, copies the global model in and folds every update
out. This script does that same work the way one would write it by hand,
without fedsim — no workers, messages, Prefect or MLflow: the same sampled
clients (McMahan's sampling from the same seed), the same partitions, the same
per-client seeds, the same SGD loop (``fl.training.train_local``, the
baseline's loop too), two threads of one torch thread each training
consecutive halves of the round, each folding into its own float64 sum with
``add_``. Its slowdown is the cost of the federated computation; fedsim's over
it is the cost of simulating it with real workers.

Prints one JSON line: ``train_seconds`` (the rounds), ``samples`` (trained),
``accuracy`` (final, on the test set).

    .venv/bin/python benchmarks/plain_fedavg.py --workers 1000 --fraction 0.1 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from fl.data import load_split
from fl.models import build_model, get_state
from fl.partition import Partitioning
from fl.task_data import partition_source
from fl.training import TrainConfig, evaluate, train_local
from flows.rounds.clients import client_seed
from workers.memory import tune_malloc

StateDict = dict[str, torch.Tensor]


def train_half(
    indices: list[int], state: StateDict, parts: list, config: TrainConfig, seed: int, rnd: int
) -> tuple[dict[str, torch.Tensor], int]:
    """Train ``indices`` in turn from ``state``; their float64 sum Σ n·x, and Σ n."""
    torch.set_num_threads(1)
    model = build_model("cnn")
    sums = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.items()}
    samples = 0
    for index in indices:
        data = parts[index]
        model.load_state_dict(state)
        generator = torch.Generator().manual_seed(client_seed(seed, rnd, index))
        train_local(model, data, config, generator)
        for key, value in model.state_dict().items():
            sums[key].add_(value, alpha=float(len(data)))
        samples += len(data)
    return sums, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tune_malloc()  # as fedsim's CLI does

    source = partition_source(
        Partitioning("fashion-mnist", "iid", args.workers, args.seed), data_dir=None
    )
    parts = [source.part(i) for i in range(args.workers)]
    test = load_split("fashion-mnist", train=False, data_dir=None)
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05)  # the full profile's
    model = build_model("cnn", seed=args.seed)
    state = get_state(model)
    sampler = torch.Generator().manual_seed(args.seed)
    per_round = max(round(args.fraction * args.workers), 1)
    pool = ThreadPoolExecutor(2)
    train_seconds, samples = 0.0, 0
    for rnd in range(1, args.rounds + 1):
        start = time.perf_counter()
        drawn = torch.randperm(args.workers, generator=sampler)[:per_round]
        chosen = [int(i) for i in drawn.sort().values]
        half = (len(chosen) + 1) // 2
        futures = [
            pool.submit(train_half, batch, state, parts, config, args.seed, rnd)
            for batch in (chosen[:half], chosen[half:])
        ]
        results = [f.result() for f in futures]
        total = sum(n for _, n in results)
        state = {
            key: (sum(sums[key] for sums, _ in results) / total).to(value.dtype)
            for key, value in state.items()
        }
        train_seconds += time.perf_counter() - start
        samples += total
    model.load_state_dict(state)
    accuracy = evaluate(model, test).accuracy
    print(json.dumps({"train_seconds": train_seconds, "samples": samples, "accuracy": accuracy}))


if __name__ == "__main__":
    main()
