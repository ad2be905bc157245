"""A worker process's resident memory, against a bare ``import torch`` measured alongside.

Both are resident sizes (RSS) of real processes on this machine: the budget is
what fedsim adds to torch itself — its imports, a 2,000-image partition, and
what one round of CNN training leaves behind.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from fl.models import build_model, get_state
from fl.training import TrainConfig
from tests.workers.running import HOST, client_for, start_worker, stop_worker

pytestmark = pytest.mark.e2e  # real worker processes, measured

BUDGET = 400 * 2**20


def _bare_torch_rss() -> int:
    bare = subprocess.Popen(
        [sys.executable, "-c", "import torch, sys; print(flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bare.stdout is not None
        bare.stdout.readline()
        return int(psutil.Process(bare.pid).memory_info().rss)
    finally:
        bare.kill()
        bare.wait()


def test_a_worker_with_2000_images_stays_within_400_mb_of_torch_after_training(
    tmp_path: Path,
) -> None:
    # Prepare: a worker loading partition 0/1 of the first 2,000 training images.
    worker = start_worker(tmp_path, "ws-0", HOST, tls=False, partition="0/1", samples=2000)
    try:
        process = psutil.Process(worker.process.pid)

        # Execute: one round of CNN training on all of it.
        with client_for(worker, "ws-0") as client:
            start = client.send(get_state(build_model("cnn", seed=0)))
            config = TrainConfig(epochs=1, batch_size=32, lr=0.05)
            _, reply = client.train("cnn", start, config, seed=1)
            rss = int(process.memory_info().rss)
        bare = _bare_torch_rss()

        # Assert
        assert reply.num_samples == 2000
        assert rss - bare < BUDGET, f"worker {rss >> 20} MB, bare torch {bare >> 20} MB"
    finally:
        stop_worker(worker)
