"""The machine-load meter counts the cores other processes held while a level ran."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows.machine_load import BUSY_CORES, LoadMeter, _own_seconds

_BURN = 2.0  # seconds a foreign process keeps one core busy


def test_a_foreign_process_burning_a_core_is_counted_as_others() -> None:
    # A grandchild that outlives its parent is reparented: not ours any more.
    code = (
        "import os, time\n"
        "if os.fork():\n"
        "    os._exit(0)\n"
        f"end = time.time() + {_BURN}\n"
        "while time.time() < end:\n"
        "    pass\n"
    )
    meter = LoadMeter().start()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    time.sleep(_BURN + 0.2)
    metrics = meter.metrics()
    assert metrics["machine_other_cores"] >= BUSY_CORES  # it held ~1 core the whole time
    assert metrics["machine_cores"] == float(os.cpu_count() or 1)
    assert metrics["machine_load_1m"] >= 0.0


def _reparented(argv: list[str], pid_file: Path) -> int:
    """Start a process that is not our descendant (its parent exits at once); its pid."""
    code = (
        "import os, sys, time\n"
        "if os.fork():\n"
        "    os._exit(0)\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(5)\n"
    )
    subprocess.run([sys.executable, "-c", code, *argv], check=True, timeout=30)
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text():
            return int(pid_file.read_text())
        time.sleep(0.05)
    raise AssertionError("the process did not start")


def test_a_fedsim_worker_daemon_on_this_host_is_the_runs_own(tmp_path: Path) -> None:
    """Level 5's workers, started apart by `fedsim worker up`, are not other processes;
    any other process not descended from this one is."""
    daemon = _reparented(["fedsim", "worker", "serve"], tmp_path / "daemon")
    stranger = _reparented(["something", "else"], tmp_path / "stranger")
    try:
        own = _own_seconds()
        assert daemon in own and stranger not in own and os.getpid() in own
    finally:
        for pid in (daemon, stranger):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
