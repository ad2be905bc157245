"""Websocket worker processes started by hand for worker tests: start, connect, stop."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from workers.auth import read_secret, write_secret
from workers.tls import make_worker_pki
from workers.ws_client import WebsocketWorker

HOST = "127.0.0.1"


@dataclass
class RunningWorker:
    process: subprocess.Popen[str]
    url: str
    token: Path
    log: Path
    ca: Path | None = None


def start_worker(
    tmp: Path,
    worker_id: str,
    host: str,
    *,
    tls: bool,
    partition: str = "0/2",
    samples: int = 400,
) -> RunningWorker:
    token = tmp / f"{worker_id}.token"
    write_secret(token)
    command = [sys.executable, "-m", "fedsim", "worker", "serve", "--id", worker_id]
    command += ["--host", host, "--port", "0", "--token-file", str(token), "--threads", "1"]
    command += ["--partition", partition, "--train-samples", str(samples)]
    ca = None
    if tls:
        pki = make_worker_pki(tmp / "pki", [host])
        command += ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
        ca = pki.ca_cert
    log = tmp / f"{worker_id}.log"
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, stdin=subprocess.DEVNULL
    )
    assert process.stdout is not None
    ready = json.loads(process.stdout.readline())  # the worker's first stdout line
    scheme = "wss" if tls else "ws"
    return RunningWorker(process, f"{scheme}://{host}:{ready['port']}", token, log, ca)


def stop_worker(worker: RunningWorker) -> None:
    worker.process.terminate()
    worker.process.wait(timeout=10)


def client_for(worker: RunningWorker, worker_id: str) -> WebsocketWorker:
    return WebsocketWorker(
        worker_id, worker.url, secret=read_secret(worker.token), cafile=worker.ca, timeout=60
    )
