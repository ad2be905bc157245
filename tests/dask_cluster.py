"""A Dask cluster started the way docs/scale.md tells users to: ``dask scheduler`` and
``dask worker`` commands, separate process trees that fedsim only knows by address.

Loopback only, free ports, bounded waits; every process is stopped on exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.ports import free_port

__all__ = ["DaskCommands", "dask_commands"]

DASK = str(Path(sys.executable).with_name("dask"))
START_SECONDS = 90.0


class DaskCommands:
    """A running ``dask scheduler``; :meth:`add_workers` starts ``dask worker`` processes."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self._log_dir = log_dir
        self._procs: list[subprocess.Popen[bytes]] = []
        command = ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"]
        scheduler = self._start("scheduler", command, {})
        deadline = time.monotonic() + START_SECONDS
        while True:
            if scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited: {self.log('scheduler')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no dask scheduler after {START_SECONDS} s") from None
                time.sleep(0.2)

    def add_workers(self, count: int, env: Mapping[str, str]) -> None:
        """``count`` single-threaded worker processes (one nanny) with ``env`` added
        to this process's environment; returns once the scheduler counts them."""
        from distributed import Client

        name = f"workers-{len(self._procs)}"
        with Client(self.address, timeout=START_SECONDS, set_as_default=False) as client:
            expected = len(client.nthreads()) + count
            command = ["worker", self.address, "--nthreads", "1", "--nworkers", str(count)]
            self._start(name, [*command, "--host", "127.0.0.1", "--no-dashboard"], env)
            try:
                client.wait_for_workers(expected, timeout=START_SECONDS)
            except TimeoutError:
                raise RuntimeError(f"dask workers did not join: {self.log(name)}") from None

    def models_built(self) -> dict[str, int]:
        """Per worker, the client modules its process pool built: > 0 where clients trained."""
        from distributed import Client

        def built() -> int:  # nested: shipped by value, as workers cannot import tests/
            from flows.rounds.batch_tasks import PROCESS_MODELS

            return PROCESS_MODELS.built

        with Client(self.address, timeout=START_SECONDS, set_as_default=False) as client:
            return client.run(built)  # type: ignore[no-any-return]

    def log(self, name: str) -> str:
        """The last lines one of the started commands printed."""
        return (self._log_dir / f"dask-{name}.log").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        """Stop every started command and its children (nannies, worker processes)."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    def _start(self, name: str, args: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        with open(self._log_dir / f"dask-{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [DASK, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,  # a process group of its own: its children stop too
            )
        self._procs.append(proc)
        return proc


@contextmanager
def dask_commands(log_dir: Path) -> Iterator[DaskCommands]:
    """A scheduler (no workers yet), stopped with everything added to it on exit."""
    with ExitStack() as stack:
        cluster = DaskCommands(log_dir)
        stack.callback(cluster.close)
        yield cluster
