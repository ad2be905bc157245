"""A worker that poses as the coordinator to another worker of the same run.

Level-5 daemons started by `fedsim worker up` (TLS, a key file each): worker-0's
operator holds worker-0's key file and tries it on worker-1. With one secret
per run it would be let in and could run any request there (issue 18).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from workers.auth import read_secret, worker_key
from workers.errors import WorkerError
from workers.ws_client import WebsocketWorker


def _fedsim(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fedsim", *args], check=True, timeout=300)


def test_a_worker_key_does_not_open_another_worker(tmp_path: Path) -> None:
    # Prepare: two TLS daemons and their workers file.
    folder = tmp_path / "level5"
    _fedsim("worker", "up", "--dir", str(folder), "--workers", "2", "--train-samples", "40")
    try:
        listing = tomllib.loads((folder / "workers.toml").read_text())
        worker_1 = next(w for w in listing["worker"] if w["id"] == "worker-1")
        ca = folder / listing["ca"]
        stolen = read_secret(folder / "worker-0.key")  # all worker-0's operator holds

        # Execute / Assert: worker-0's key is refused by worker-1 ...
        with pytest.raises(WorkerError, match="wrong secret"):
            WebsocketWorker("worker-1", worker_1["url"], secret=stolen, cafile=ca, timeout=30)

        # ... which still serves the coordinator, whose master secret derives its key.
        master = read_secret(folder / listing["token_file"])
        with WebsocketWorker(
            "worker-1", worker_1["url"], secret=worker_key(master, "worker-1"), cafile=ca
        ) as coordinator:
            assert coordinator.ping().worker_id == "worker-1"
    finally:
        _fedsim("worker", "down", "--dir", str(folder))
