"""Fixtures for flow tests: one Prefect test server per session, MLflow per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsim.prefect_server import STARTUP_DEADLINE_SECONDS


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A real, temporary Prefect API server (loopback, stopped afterwards).

    Its deadline is fedsim's own (``fedsim.prefect_server``): creating the
    database takes seconds on an idle machine and minutes on a busy one.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=int(STARTUP_DEADLINE_SECONDS)),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FEDSIM_REPORTS_DIR", str(tmp_path / "reports"))  # not the repo's reports/
    return uri
