"""Suite-wide settings: offline, quiet, and every store in a temporary folder.

Set at import, before any test module imports Prefect or MLflow (both read
their settings then), so no test writes into the repository's ``mlruns/`` or
``reports/``, or the user's ``~/.prefect`` and ``~/.cache/fedsim``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from fedsim.cli import quiet_defaults

_scratch = Path(tempfile.mkdtemp(prefix="fedsim-tests-"))
atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_scratch / 'mlflow.db'}"
os.environ["PREFECT_HOME"] = str(_scratch / "prefect")
os.environ["FEDSIM_CACHE"] = str(_scratch / "cache")
os.environ["FEDSIM_REPORTS_DIR"] = str(_scratch / "reports")  # inherited by served flow runs
os.environ["FEDSIM_OFFLINE"] = "1"
quiet_defaults()


# Fixtures that start a server, worker daemons or a whole flow: a test that uses
# one is end to end. Tests that start processes without them say so themselves.
_E2E_FIXTURES = frozenset(
    {"prefect_harness", "mlflow_uri", "level5", "level5_daemons", "level5_shared"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
