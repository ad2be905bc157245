"""What an existing Dask cluster must offer before a run sends it level 3's batches.

With ``--dask-address`` the clients train on machines fedsim did not set up.
Three things go wrong there, and each would otherwise show late and badly: a
scheduler that cannot be reached (Dask retries for 30 s, then a traceback, after
the levels before 3 have run), a scheduler without workers (the batches wait
forever), and workers that cannot run the batches — fedsim not installed, the
dataset missing, or a different copy of it (the run would finish, with results
that are not the in-process run's). :func:`check_dask_cluster` asks the cluster
before Prefect starts and turns each into one line.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fl.data import dataset_checksum
from fl.errors import ConfigError

if TYPE_CHECKING:
    from flows.config import ExperimentConfig

__all__ = ["CONNECT_SECONDS", "check_dask_cluster", "worker_dataset_checksum"]

# A scheduler on the same network answers in milliseconds; Dask's own default (30 s)
# allows for a busy one. This is for the first contact only.
CONNECT_SECONDS = 10.0
_SOCKET_SCHEMES = frozenset({"tcp", "tls", "ws", "wss"})


def worker_dataset_checksum(dataset: str, data_dir: str | None) -> str:
    """Run on each Dask worker: the sha256 of the dataset it would train on.

    Shipped by reference (module and name), so a worker without fedsim fails to
    import it: that failure is the check that fedsim is installed there.
    """
    return dataset_checksum(dataset, data_dir)


def check_dask_cluster(cfg: ExperimentConfig) -> int:
    """Raise ConfigError, one line, unless ``cfg.dask_address`` has workers that can
    train this experiment on the same data as this process; return their number."""
    address = cfg.dask_address
    if address is None:
        raise ValueError("check_dask_cluster needs a --dask-address")
    _probe_socket(address)
    from distributed import Client  # Dask is only imported when used

    try:
        client = Client(address, timeout=CONNECT_SECONDS, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        workers = client.nthreads()
        if not workers:
            raise ConfigError(
                f"the Dask scheduler at {address} has no workers: start "
                f"`dask worker {address}` on the machines that should train"
            )
        answers = client.run(worker_dataset_checksum, cfg.dataset, cfg.data_dir, on_error="return")
    failed = sorted((w, a) for w, a in answers.items() if isinstance(a, BaseException))
    if failed:
        worker, error = failed[0]
        hint = "install fedsim there" if isinstance(error, ImportError) else "see the README"
        raise ConfigError(
            f"Dask worker {worker} cannot run fedsim's batches "
            f"({type(error).__name__}: {error}): {hint}"
        )
    expected = dataset_checksum(cfg.dataset, cfg.data_dir)
    for worker, checksum in sorted(answers.items()):
        if checksum != expected:
            raise ConfigError(
                f"Dask worker {worker} sees other {cfg.dataset} data than this process "
                f"(sha256 {checksum[:12]}… against {expected[:12]}…): its clients would "
                "train on other samples"
            )
    return len(workers)


def _probe_socket(address: str) -> None:
    """Fail at once on a refused port, or within CONNECT_SECONDS on an unreachable host,
    instead of Dask's retries; other transports (inproc, ucx) are left to Dask."""
    parts = urlsplit(address)
    if parts.scheme not in _SOCKET_SCHEMES:
        return
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        raise ConfigError(f"--dask-address {address!r} has no valid port") from None
    if host is None or port is None:
        raise ConfigError(
            f"--dask-address {address!r} needs a host and a port, like tcp://HOST:8786"
        )
    try:
        with socket.create_connection((host, port), timeout=CONNECT_SECONDS):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {address}: {exc.strerror or exc}"
        ) from None
