"""The examples in ``examples/`` run as written, as a user would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # each example runs in a process of its own

ROOT = Path(__file__).resolve().parent.parent


def _run(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_remote_shares_example_opens_each_result_only_to_its_audience() -> None:
    out = _run("remote_shares.py")
    error = float(re.search(r"max error: (\S+)", out).group(1))  # type: ignore[union-attr]
    assert error < 1e-3
    assert "opened to dana as 'revealed/" in out
    assert "':coordinator' may not see" in out


def test_authenticated_shares_example_catches_the_cheating_party() -> None:
    out = _run("authenticated_shares.py")
    error = float(re.search(r"max error: (\S+)", out).group(1))  # type: ignore[union-attr]
    assert error < 1e-2  # inputs with 12 fractional bits, the rest exact
    assert "bob cheated: MAC check failed" in out
