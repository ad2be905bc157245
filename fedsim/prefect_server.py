"""Prefect's temporary API server, started and stopped by fedsim itself.

Without ``PREFECT_API_URL`` Prefect starts a temporary server on first use and
gives it 20 s; on a fresh ``PREFECT_HOME`` it creates its database first, which
takes longer than that on a busy machine, and the run dies with "Timed
out while attempting to connect to ephemeral Prefect API server". fedsim starts
the same server (Prefect's own ``create_app`` under uvicorn) before the run:

- with a generous start-up deadline, saying what it waits for while it waits,
  and failing at once, with the server's last line, if the server exits;
- on a socket fedsim binds itself and hands over, so no free-port race;
- in its own session, so a Ctrl-C in the terminal (SIGINT to the foreground
  process group) does not stop it under the run that is reporting to it;
- dying with fedsim (``workers.lifetime``), even after ``kill -9``.

With ``PREFECT_API_URL`` set, the user's server is used and nothing is started.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO

from fl.errors import FedsimError
from workers.lifetime import child_environment

__all__ = ["STARTUP_DEADLINE_SECONDS", "prefect_api"]

# Creating the database on a fresh PREFECT_HOME takes seconds on an idle machine
# and several times that on a busy one (docs/operations.md, "Prefect"); the
# deadline is only there so that a server that never answers cannot hang the run.
STARTUP_DEADLINE_SECONDS = 600.0
_SAY_WAITING_AFTER_SECONDS = 3.0
_POLL_SECONDS = 0.2


class PrefectServerError(FedsimError):
    """Prefect's temporary API server did not start."""


@contextlib.contextmanager
def prefect_api(
    say: Callable[[str], None],
    *,
    deadline: float = STARTUP_DEADLINE_SECONDS,
) -> Iterator[str]:
    """Yield the Prefect API URL this process reports to, starting a server if none is set."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield str(configured)
        return
    with _server(say, deadline) as url, temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


@contextlib.contextmanager
def _server(say: Callable[[str], None], deadline: float) -> Iterator[str]:
    from prefect.settings import get_current_settings

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    env = child_environment(
        **get_current_settings().to_environment_variables(exclude_unset=True),
        PREFECT_UI_ENABLED="0",
        PREFECT__SERVER_EPHEMERAL="1",
        PREFECT__SERVER_FINAL="1",
    )
    # An unlinked file: the server's messages, kept for an error, gone with fedsim.
    with tempfile.TemporaryFile() as log:
        with listener:
            process = subprocess.Popen(
                [sys.executable, "-m", "fedsim.prefect_server", str(listener.fileno())],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(listener.fileno(),),
                start_new_session=True,
            )
        try:
            url = f"http://127.0.0.1:{port}/api"
            _wait_healthy(process, url, log, say, deadline)
            yield url
        finally:
            _stop(process)


def _wait_healthy(
    process: subprocess.Popen[bytes],
    url: str,
    log: IO[bytes],
    say: Callable[[str], None],
    deadline: float,
) -> None:
    import httpx

    start = time.monotonic()
    said = False
    with httpx.Client(timeout=5.0) as client:
        while True:
            if process.poll() is not None:
                raise PrefectServerError(
                    f"Prefect's temporary API server exited with code {process.returncode}: "
                    f"{_last_line(log)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/health").status_code == 200:
                    return
            waited = time.monotonic() - start
            if waited > deadline:
                raise PrefectServerError(
                    f"Prefect's temporary API server did not answer within {deadline:g} s; "
                    "set PREFECT_API_URL to a running server (`prefect server start`)"
                )
            if not said and waited > _SAY_WAITING_AFTER_SECONDS:
                say(
                    "waiting for Prefect's temporary API server "
                    "(its first start in a PREFECT_HOME creates the database)"
                )
                said = True
            time.sleep(_POLL_SECONDS)


def _last_line(log: IO[bytes]) -> str:
    log.seek(0)
    lines = log.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _serve(fd: int) -> None:
    """In the server process: Prefect's API app under uvicorn, on the inherited socket."""
    from workers.lifetime import die_with_parent

    die_with_parent()
    import uvicorn

    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        fd=fd,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
