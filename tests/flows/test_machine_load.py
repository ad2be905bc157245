"""The machine-load meter counts the cores other processes held while a level ran."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from flows.machine_load import BUSY_CORES, LoadMeter

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
