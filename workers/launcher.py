"""Start and stop local worker processes (level 4) — and never leave one behind.

Each worker is ``python -m fedsim worker serve`` on a loopback address with
port 0; it prints one JSON "ready" line with the port it got, so there is no
race for free ports. The pool then connects an authenticated
:class:`~workers.ws_client.WebsocketWorker` to each and pings it (health check).

No orphans: the pool is a context manager that terminates (then kills) every
process it started, on success, on error and on Ctrl-C; and each child asks the
kernel (Linux ``PR_SET_PDEATHSIG``) to be sent SIGTERM should the coordinator
itself die without cleaning up (``workers/lifetime.py``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fl.partition import Partitioning
from workers.auth import new_secret, worker_key
from workers.cohort import default_min_cohort
from workers.errors import WorkerError
from workers.fleet import Fleet, check_partition
from workers.lifetime import child_environment
from workers.ws_client import WebsocketWorker

__all__ = [
    "LocalWorkerPool",
    "WorkerSpec",
    "threads_per_worker",
]


def threads_per_worker(workers: int) -> int:
    """Torch threads per worker so that ``workers`` processes share the cores without
    oversubscribing them (at least one each)."""
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def _connect(
    worker_id: str, url: str, secret: bytes, timeout: float, data: str, task: str
) -> WebsocketWorker:
    client = WebsocketWorker(worker_id, url, secret=secret, timeout=timeout)
    return check_partition(client, data, task)  # the health check, the right data and task


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """What the launched workers load: worker i, part i of ``partitioning``."""

    partitioning: Partitioning
    data_dir: str | None
    threads: int
    task: str | None = None  # --task's reference (partitioning.dataset is the same)
    fingerprint: str = ""  # the coordinator's fl.tasks.task_fingerprint, checked in Pong


@dataclass
class _Process:
    worker_id: str
    popen: subprocess.Popen[bytes]
    # Unlinked: nothing of a run stays in $TMPDIR, even after kill -9 of the
    # coordinator; the log of a worker that crashed is copied out (stop()).
    log: IO[bytes]
    port: int = 0

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@dataclass
class LocalWorkerPool:
    """``count`` worker processes on ``host``, each with its own partition."""

    spec: WorkerSpec
    host: str = "127.0.0.1"
    # Only a worker that is alive but silent waits this long: one that exits is
    # reported at once. Importing torch and loading a partition takes seconds
    # on an idle machine and minutes on a crowded one.
    ready_timeout: float = 600.0
    request_timeout: float = 600.0
    processes: list[_Process] = field(default_factory=list)
    fleet: Fleet | None = None

    def __post_init__(self) -> None:
        # The pool's master secret stays here; each worker gets its own derived
        # key through its stdin, never a file.
        self._secret = new_secret()

    def __enter__(self) -> LocalWorkerPool:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _command(self, index: int) -> list[str]:
        spec, key = self.spec, self.spec.partitioning
        command = [sys.executable, "-m", "fedsim", "worker", "serve", "--id", f"worker-{index}"]
        command += ["--host", self.host, "--port", "0"]
        command += ["--task", spec.task] if spec.task else ["--dataset", key.dataset]
        command += ["--partition", f"{index}/{key.count}", "--partitioner", key.partitioner]
        command += ["--seed", str(key.seed), "--token-file", "-"]
        command += ["--threads", str(spec.threads)]
        # A run of fewer clients than the served floor aggregates them all.
        command += ["--min-cohort", str(default_min_cohort(key.count))]
        if key.limit is not None:
            command += ["--train-samples", str(key.limit)]
        if spec.data_dir is not None:
            command += ["--data-dir", spec.data_dir]
        return command

    def start(self) -> Fleet:
        """Launch every process, wait for each ready line, connect and ping each."""
        for index in range(self.spec.partitioning.count):
            log = tempfile.TemporaryFile(prefix=f"fedsim-worker-{index}-")  # noqa: SIM115 (closed in stop)
            popen = subprocess.Popen(
                self._command(index),
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.PIPE,
                env=child_environment(),
            )
            self.processes.append(_Process(f"worker-{index}", popen, log))
            assert popen.stdin is not None
            # A worker that exits at once (bad options) is reported by _wait_ready.
            with contextlib.suppress(BrokenPipeError), popen.stdin:
                popen.stdin.write(worker_key(self._secret, f"worker-{index}") + b"\n")
        deadline = time.monotonic() + self.ready_timeout
        connectors = []
        for process in self.processes:
            process.port = self._wait_ready(process, deadline)
            url = f"ws://{self.host}:{process.port}"
            data = self.spec.partitioning.describe(len(connectors))
            connectors.append(
                functools.partial(
                    _connect,
                    process.worker_id,
                    url,
                    worker_key(self._secret, process.worker_id),
                    self.request_timeout,
                    data,
                    self.spec.fingerprint,
                )
            )
        self.fleet = Fleet(connectors, [process.worker_id for process in self.processes])
        return self.fleet

    def _wait_ready(self, process: _Process, deadline: float) -> int:
        assert process.popen.stdout is not None
        stream = process.popen.stdout
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise WorkerError(
                    f"{process.worker_id} exited with code {process.popen.returncode}: "
                    f"{self._last_log_line(process)}"
                )
            readable, _, _ = select.select([stream], [], [], 0.2)
            if readable:
                line = stream.readline()
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == "ready":
                        return int(event["port"])
        raise WorkerError(f"{process.worker_id} not ready within {self.ready_timeout:g} s")

    @staticmethod
    def _last_log_line(process: _Process) -> str:
        lines = process.log_text().strip().splitlines()
        return lines[-1] if lines else "no output"

    def stop(self) -> None:
        """Close every connection and end every process; idempotent."""
        if self.fleet is not None:
            self.fleet.close()
            self.fleet = None
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in self.processes:
            try:
                process.popen.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
            if process.popen.stdout is not None:
                process.popen.stdout.close()
        crashed = [p for p in self.processes if p.popen.returncode not in _STOPPED]
        if crashed:
            _keep_logs(crashed)
        for process in self.processes:
            process.log.close()
        self.processes.clear()


# A worker stops on SIGTERM (or a terminal's SIGINT) with exit code 0 without
# waiting for a request in progress; one that got either before it was serving
# (still importing or loading) exits by the signal or through `fedsim`'s own
# handlers (128 + signal number): stopped too, not crashed.
_STOPPED = frozenset(
    code for signum in (signal.SIGTERM, signal.SIGINT) for code in (0, -signum, 128 + signum)
)
_STOP_SECONDS = 10.0


def _keep_logs(crashed: list[_Process]) -> None:
    """Copy the logs of workers that died on their own (or had to be killed) to a folder."""
    folder = Path(tempfile.mkdtemp(prefix="fedsim-workers-"))
    for process in crashed:
        (folder / f"{process.worker_id}.log").write_text(process.log_text())
    codes = ", ".join(f"{p.worker_id} (code {p.popen.returncode})" for p in crashed)
    logging.getLogger("fedsim.launcher").warning(
        "worker(s) %s exited abnormally; logs kept in %s", codes, folder
    )
