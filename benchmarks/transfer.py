"""Raw weight-transfer throughput to a websocket worker on loopback.

Sends the McMahan CNN state (1.66 M float32 = 6.65 MB) to a real worker process
and gets it back, over plain ``ws://`` and over ``wss://`` with authentication,
and reports MB/s of encoded frames moved (both directions). The in-process
virtual worker (encode + decode, no socket) runs in the same invocation as the
reference.

    .venv/bin/python benchmarks/transfer.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from table import write_table

from fl.models import build_model, get_state
from workers.auth import read_secret, write_secret
from workers.base import Worker
from workers.tls import make_worker_pki
from workers.virtual import VirtualWorker
from workers.ws_client import WebsocketWorker


def _round_trips(worker: Worker, repeats: int) -> tuple[float, float]:
    """Median seconds of one send+get of the CNN state, and bytes moved per round trip."""
    state = get_state(build_model("cnn", seed=0))
    worker.send(state).get()  # warm-up
    times = []
    before = worker.bytes_sent + worker.bytes_received
    for _ in range(repeats):
        start = time.perf_counter()
        worker.send(state).get()
        times.append(time.perf_counter() - start)
    moved = (worker.bytes_sent + worker.bytes_received - before) / repeats
    return statistics.median(times), moved


def _start(folder: Path, host: str, tls: bool) -> tuple[subprocess.Popen[str], str, Path | None]:
    command = [sys.executable, "-m", "fedsim", "worker", "serve", "--id", "bench"]
    command += ["--host", host, "--port", "0", "--token-file", str(folder / "token")]
    ca = None
    if tls:
        pki = make_worker_pki(folder / f"pki-{host}", [host])
        command += ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
        ca = pki.ca_cert
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    port = json.loads(process.stdout.readline())["port"]
    return process, f"{'wss' if tls else 'ws'}://{host}:{port}", ca


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/transfer.md"))
    args = parser.parse_args()
    rows = []
    seconds, moved = _round_trips(VirtualWorker("bench"), args.repeats)
    rows.append(("virtual (in-process encode/decode)", seconds, moved))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_secret(folder / "token")
        secret = read_secret(folder / "token")
        for label, host, tls in (
            ("ws:// + auth", "127.0.0.1", False),
            ("wss:// + auth", "127.0.0.2", True),
        ):
            process, url, ca = _start(folder, host, tls)
            try:
                with WebsocketWorker("bench", url, secret=secret, cafile=ca) as worker:
                    seconds, moved = _round_trips(worker, args.repeats)
                rows.append((f"websocket {label}", seconds, moved))
            finally:
                process.terminate()
                process.wait(timeout=10)
    lines = [
        f"McMahan CNN state (6.65 MB) send + get, median of {args.repeats}:",
        "",
        "| transport | round trip ms | MB moved | throughput MB/s |",
        "|---|---:|---:|---:|",
    ]
    for label, seconds, moved in rows:
        lines.append(
            f"| {label} | {seconds * 1e3:.1f} | {moved / 1e6:.2f} | {moved / seconds / 1e6:.0f} |"
        )
    write_table(lines, args.out)


if __name__ == "__main__":
    main()
