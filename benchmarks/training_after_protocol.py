"""Benchmark: does an aggregation protocol slow down the local training that follows it?

In one process, as at level 2: ten virtual workers train one round sealed, a
protocol consumes their states (none, secure aggregation, or secure
aggregation with MACs), and the next round's training is timed. Modes are
interleaved, 4 repeats each; the table gives each mode's median training
seconds over the "none" mode's. Synthetic images (1,500 a client): the
question is the process's state after the protocol, not the data.

    .venv/bin/python benchmarks/training_after_protocol.py [--repeats 4]
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

import torch
from provenance import git_commit
from table import write_table

from fedsim.cli import quiet_defaults

quiet_defaults()

from fl.models import build_model, get_state  # noqa: E402
from fl.training import TrainConfig  # noqa: E402
from mpc.protocols.secure_aggregation.coordinator import SecureInput, secure_average  # noqa: E402
from mpc.protocols.secure_aggregation_mac.coordinator import secure_average_mac  # noqa: E402
from workers.core import TRAIN_X_ID, TRAIN_Y_ID, WorkerCore  # noqa: E402
from workers.memory import tune_malloc  # noqa: E402
from workers.virtual import VirtualWorker  # noqa: E402

CLIENTS, SAMPLES = 10, 1500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument(
        "--out-prefix", type=Path, default=Path("benchmarks/results/training_after_protocol")
    )
    args = parser.parse_args()
    tune_malloc()  # as fedsim's CLI does
    load_before = os.getloadavg()
    generator = torch.Generator().manual_seed(0)
    workers = []
    for index in range(CLIENTS):
        images = torch.randn(SAMPLES, 1, 28, 28, generator=generator)
        labels = torch.randint(0, 10, (SAMPLES,), generator=generator)
        core = WorkerCore(
            f"w{index}",
            objects={TRAIN_X_ID: images, TRAIN_Y_ID: labels},
            private=frozenset({TRAIN_X_ID, TRAIN_Y_ID}),
        )
        workers.append(VirtualWorker(f"w{index}", core=core))
    state = get_state(build_model("cnn", seed=0))
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05)

    def train_round() -> tuple[float, list[SecureInput]]:
        start = time.perf_counter()
        inputs = []
        for index, worker in enumerate(workers):
            pointer, reply = worker.train(
                "cnn", worker.send(state), config, seed=index, sealed=True
            )
            inputs.append(SecureInput(worker, pointer, reply.num_samples))
        return time.perf_counter() - start, inputs

    def free(inputs: list[SecureInput]) -> None:
        for item in inputs:
            item.worker.delete([item.state])

    results: dict[str, list[float]] = {"none": [], "secure": [], "mac": []}
    order = list(results) * args.repeats
    for mode in order:
        _, inputs = train_round()  # the round whose states the protocol consumes
        if mode == "secure":
            secure_average(inputs, workers[:3], state, min_cohort=3)
        elif mode == "mac":
            secure_average_mac(inputs, workers[:3], workers[3], state, min_cohort=3)
        else:
            free(inputs)
        seconds, inputs = train_round()  # the round right after the protocol
        free(inputs)
        results[mode].append(seconds)
        print(f"{mode}: {seconds:.2f} s", flush=True)
    facts = {
        "command": shlex.join([".venv/bin/python", *sys.argv]),
        "git_commit": git_commit(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "order": order,
        "training_seconds": results,
    }
    args.out_prefix.parent.mkdir(parents=True, exist_ok=True)
    args.out_prefix.with_suffix(".json").write_text(json.dumps(facts, indent=1) + "\n")
    base = statistics.median(results["none"])
    table = [
        f"`{facts['command']}`",
        "",
        f"{CLIENTS} virtual workers × {SAMPLES:,} synthetic images, McMahan CNN, E=1, B=32; "
        "the round trained right after a protocol consumed the previous round's states; "
        f"{args.repeats} repeats, modes interleaved; commit {facts['git_commit']}, "
        f"nproc {facts['nproc']}, load {load_before[0]:.2f} before / "
        f"{facts['load_after'][0]:.2f} after; {facts['date']}.",
        "",
        "| protocol before the round | median training s | min–max s | × none |",
        "|---|---:|---:|---:|",
    ]
    for mode, xs in results.items():
        median = statistics.median(xs)
        table.append(
            f"| {mode} | {median:.2f} | {min(xs):.2f}–{max(xs):.2f} | {median / base:.3f}× |"
        )
    write_table(table, args.out_prefix.with_suffix(".md"))


if __name__ == "__main__":
    main()
