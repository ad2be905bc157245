"""``fedsim worker up|down``: level-5 workers as separate daemons on this machine.

The way to try level 5 on one host: each worker is an independent
``fedsim worker serve`` daemon on its own loopback address (127.0.0.2,
127.0.0.3, …) with mutual TLS from CAs made for the purpose (the workers'
server certificate, the coordinator's client certificate) and a key each,
exactly as it would run on remote hosts; ``up`` writes the workers file the
coordinator reads, ``down`` stops the daemons. Real deployments start the
same command on each host (see docs/levels.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fl.errors import ConfigError
from flows.profiles import PROFILES

__all__ = ["fleet_down", "fleet_up"]

_PIDS = "pids.json"


def _hosts(count: int) -> list[str]:
    if not 1 <= count <= 250:
        raise ConfigError(f"--workers must be in 1..250 for loopback daemons, got {count}")
    return [f"127.0.0.{2 + index}" for index in range(count)]


def _wait_ready(path: Path, process: subprocess.Popen[bytes], deadline: float) -> int:
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return int(json.loads(text.splitlines()[0])["port"])
        if process.poll() is not None:
            raise ConfigError(f"worker daemon exited with code {process.returncode}; see logs")
        time.sleep(0.1)
    raise ConfigError(f"worker daemon not ready; see {path.parent}")


def fleet_up(args: argparse.Namespace) -> int:
    """Start ``args.workers`` daemons and write ``<dir>/workers.toml``."""
    from workers.auth import write_secret, write_worker_key
    from workers.cohort import default_min_cohort
    from workers.launcher import threads_per_worker
    from workers.tls import make_worker_pki

    folder = Path(args.dir)
    if (folder / _PIDS).exists():
        fleet_down(args)
    folder.mkdir(parents=True, exist_ok=True)
    hosts = _hosts(args.workers)
    # As `fedsim run`: the profile's count cuts the image sets; a task's default is all.
    default = None if args.task else PROFILES["quick"]["train_samples"]
    train_samples = getattr(args, "train_samples", default)
    pki = make_worker_pki(folder / "pki", hosts)
    token = folder / "token"
    master = write_secret(token)  # the coordinator's; each daemon gets its own derived key
    write_secret(folder / "peer-secret")  # the daemons', not the coordinator's (simulated here)
    started: list[tuple[str, str, subprocess.Popen[bytes], Path]] = []
    for index, host in enumerate(hosts):
        worker_id = f"worker-{index}"
        command = [sys.executable, "-m", "fedsim", "worker", "serve", "--id", worker_id]
        command += ["--host", host, "--port", "0", "--partition", f"{index}/{args.workers}"]
        command += ["--partitioner", args.partition, "--seed", str(args.seed)]
        key_file = folder / f"{worker_id}.key"
        write_worker_key(master, worker_id, key_file)
        command += ["--dataset", args.dataset, "--token-file", str(key_file)]
        if args.task:
            command += ["--task", args.task]
        command += ["--peer-secret-file", str(folder / "peer-secret")]
        command += ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
        command += ["--tls-client-ca", str(pki.client_ca_cert)]
        command += ["--threads", str(threads_per_worker(args.workers))]
        command += ["--min-cohort", str(default_min_cohort(args.workers))]
        if train_samples is not None:
            command += ["--train-samples", str(train_samples)]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        ready = folder / f"{worker_id}.ready"
        ready.unlink(missing_ok=True)
        with ready.open("wb") as out, (folder / f"{worker_id}.log").open("wb") as log:
            process = subprocess.Popen(
                command, stdout=out, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        started.append((worker_id, host, process, ready))
        # Recorded at once, so that `down` finds every daemon even if this start fails.
        (folder / _PIDS).write_text(json.dumps([{"pid": p.pid} for _, _, p, _ in started]))
    deadline = time.monotonic() + 120
    lines = ['token_file = "token"', 'ca = "pki/ca.pem"']
    lines += ['client_cert = "pki/coordinator.pem"', 'client_key = "pki/coordinator-key.pem"', ""]
    daemons = []
    for worker_id, host, process, ready in started:
        try:
            port = _wait_ready(ready, process, deadline)
        except BaseException:
            fleet_down(args)  # no daemon left behind by a failed start
            raise
        lines += ["[[worker]]", f'id = "{worker_id}"', f'url = "wss://{host}:{port}"', ""]
        # How to restart this daemon on the same address (its port is now known).
        command = [*process.args, "--port", str(port)]  # type: ignore[misc]
        daemons.append({"pid": process.pid, "worker_id": worker_id, "command": command})
    (folder / "workers.toml").write_text("\n".join(lines))
    (folder / _PIDS).write_text(json.dumps(daemons, indent=1))
    print(f"{len(started)} TLS workers up on {hosts[0]}..{hosts[-1]}; {folder / 'workers.toml'}")
    return 0


def fleet_down(args: argparse.Namespace) -> int:
    """Stop the daemons started by ``fleet_up`` in ``args.dir``."""
    pid_file = Path(args.dir) / _PIDS
    if not pid_file.exists():
        return 0
    pids = [int(entry["pid"]) for entry in json.loads(pid_file.read_text())]
    pids = [pid for pid in pids if _ours(pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 10
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink()
    print(f"stopped {len(pids)} worker daemons")
    return 0


def _ours(pid: int) -> bool:
    """Still a `fedsim worker serve` process (pids get reused once a daemon is gone)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"fedsim" in command and b"serve" in command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as stopped.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
