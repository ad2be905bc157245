"""The environment of a ``fedsim run`` a test starts in a process of its own."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["isolated_run_env"]


def isolated_run_env(folder: Path) -> dict[str, str]:
    """This environment with a private MLflow store, Prefect home and reports in ``folder``.

    Prefect's own start-up deadline is cut to 1 s, less than its server takes to
    create a fresh database: the run must not depend on it (fedsim waits itself;
    on a busy machine the default 20 s was not enough either). ``COLUMNS`` fixes
    the width of the table the tests read.
    """
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "PREFECT_HOME": str(folder / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1",
        "FEDSIM_REPORTS_DIR": str(folder / "reports"),
        "COLUMNS": "120",
    }
