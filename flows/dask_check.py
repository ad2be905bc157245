"""What an existing Dask cluster must offer before a run sends it level 3's batches.

With ``--dask-address`` the clients train on machines fedsim did not set up.
Three things go wrong there, and each would otherwise show late and badly: a
scheduler that cannot be reached (Dask retries for 30 s, then a traceback, after
the levels before 3 have run), a scheduler without workers (the batches wait
forever), and workers that cannot run the batches — fedsim not installed, the
dataset missing — or that would run them differently: another copy of the
dataset, another version of fedsim's code or of torch (the run would finish,
with results that are not the in-process run's). :func:`check_dask_cluster` asks
the cluster before Prefect starts and turns each into one line.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

import torch

from fl.errors import ConfigError
from fl.task_fingerprint import code_digest, data_digest
from fl.tasks import data_task

if TYPE_CHECKING:
    from flows.config import ExperimentConfig

__all__ = ["CONNECT_SECONDS", "Fingerprint", "check_dask_cluster", "fingerprint"]

# A scheduler on the same network answers in milliseconds; Dask's own default (30 s)
# allows for a busy one. This is for the first contact only.
CONNECT_SECONDS = 10.0
_SOCKET_SCHEMES = frozenset({"tcp", "tls", "ws", "wss"})
# The packages whose code a batch runs on a worker.
_PACKAGES = ("fl", "flows", "workers", "mpc")


class Fingerprint(NamedTuple):
    """What decides a batch's bits besides its inputs: the code, torch, the data."""

    code: str  # sha256 over fedsim's package sources
    torch: str
    data: str  # fl.tasks.data_digest
    task_code: str  # fl.tasks.code_digest


def fingerprint(data_key: str, data_dir: str | None) -> Fingerprint:
    """This process's :class:`Fingerprint` for the task whose data ``data_key`` names
    (``ExperimentConfig.data_key``); run on each Dask worker to compare.

    Shipped to workers by reference (module and name), so a worker without
    fedsim fails to import it: that failure is the check that fedsim is there.
    """
    task = data_task(data_key, data_dir)
    return Fingerprint(_code_checksum(), torch.__version__, data_digest(task), code_digest(task))


def _code_checksum() -> str:
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def check_dask_cluster(cfg: ExperimentConfig) -> None:
    """Raise ConfigError, one line, unless ``cfg.dask_address`` has workers that can
    train this experiment with the same data, code and torch as this process."""
    address = cfg.dask_address
    if address is None:
        raise ValueError("check_dask_cluster needs a --dask-address")
    _probe_socket(address)
    from distributed import Client  # Dask is only imported when used

    try:
        client = Client(address, timeout=CONNECT_SECONDS, set_as_default=False)  # type: ignore[no-untyped-call]
    except Exception as exc:  # timeouts, refused handshakes, TLS without credentials
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        if not client.nthreads():  # type: ignore[no-untyped-call]
            raise ConfigError(
                f"the Dask scheduler at {address} has no workers: start "
                f"`dask worker {address}` on the machines that should train"
            )
        answers = client.run(fingerprint, cfg.data_key, cfg.data_dir, on_error="return")
    failed = sorted((w, a) for w, a in answers.items() if isinstance(a, BaseException))
    if failed:
        # A missing fedsim arrives as Dask's wrapper of the ImportError, a missing
        # dataset as fedsim's DataError: name the error, and both requirements.
        worker, error = failed[0]
        raise ConfigError(
            f"Dask worker {worker} cannot run fedsim's batches ({type(error).__name__}: "
            f"{error}); it needs fedsim installed and the dataset where --data-dir or "
            "$FEDSIM_DATA points on that machine"
        )
    here = fingerprint(cfg.data_key, cfg.data_dir)
    _check_same(sorted((w, Fingerprint(*a)) for w, a in answers.items()), here, cfg.data_key)


# What may differ between a worker and this process, in the order it is reported.
_DIFFERENCES = (
    ("data", "sees other {dataset} data than this process (sha256 {there}… against "
             "{here}…): its clients would train on other samples"),
    ("task_code", "runs other code of task {dataset} than this process (sha256 {there}… "
                  "against {here}…): copy this task's files there"),
    ("code", "runs other fedsim code than this process (sources' sha256 {there}… against "
             "{here}…): install this version there"),
    ("torch", "runs torch {there}, this process {here}: results would differ in their "
              "last bits"),
)  # fmt: skip


def _check_same(workers: list[tuple[str, Fingerprint]], here: Fingerprint, dataset: str) -> None:
    """ConfigError for a worker that would change the run's results: any worker's
    other data first, then other code, then another torch."""
    for field, problem in _DIFFERENCES:
        mine = getattr(here, field)
        for worker, there in workers:
            theirs = getattr(there, field)
            if theirs != mine:
                detail = problem.format(dataset=dataset, there=theirs[:12], here=mine[:12])
                raise ConfigError(f"Dask worker {worker} {detail}")


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
