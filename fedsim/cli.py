"""``fedsim`` command line: ``fedsim run`` runs the benchmark flow.

This module is the process around a command (quiet settings, signals, exit
codes) and its dispatch; the options themselves are ``fedsim.options``.

Bad options exit with status 2 and one line on stderr; expected failures
(missing data, unusable option values) exit with status 1 and one line; only
bugs show a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = [
    "QUIET_ENV",
    "exit_on_second_interrupt",
    "exit_on_sigterm",
    "main",
    "quiet_defaults",
]

QUIET_ENV = {
    # Offline machines: telemetry would only print errors.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    # Progress is shown by fedsim itself; Prefect's per-task INFO lines would bury it.
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # ... on the terminal; the flow runs' INFO lines (one per round) still reach the
    # Prefect API, so its UI shows a run's progress.
    "PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": "INFO",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that ``finally`` blocks and atexit hooks run.

    Prefect's temporary API server is a subprocess stopped by an atexit hook;
    without this, ``kill <pid>`` of a run would leave it behind.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def exit_on_second_interrupt() -> None:
    """The first Ctrl-C raises KeyboardInterrupt and the run cleans up (its MLflow runs
    marked KILLED, its processes stopped); a second one exits at once.

    What a second Ctrl-C skips is still handled: the processes fedsim started
    die with it (``workers.lifetime``) and the next run closes runs left RUNNING.
    """

    def exit_now(signum: int, frame: object) -> None:
        os.write(2, b"fedsim: interrupted again: exiting now\n")
        os._exit(128 + signum)

    def first(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, exit_now)
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first)


# Set by the first Ctrl-C. Prefect can turn a KeyboardInterrupt raised inside
# its task engine into another error ("Task run is not set"); the run was still
# interrupted, and is reported so.
_INTERRUPTED = threading.Event()


def quiet_defaults() -> None:
    """Apply QUIET_ENV where the user has not set the variable; call before importing
    Prefect or MLflow, which read these at import time."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def _config_from_args(args: argparse.Namespace) -> Any:
    """Profile defaults, then the ``--config`` file, then the options actually given."""
    from flows.config_file import layered_config

    given = {k: v for k, v in vars(args).items() if k not in ("command", "profile", "config")}
    return layered_config(getattr(args, "config", None), getattr(args, "profile", None), given)


def _run(args: argparse.Namespace) -> int:
    from fedsim.display import run_with_display
    from flows.preflight import preflight

    cfg = _config_from_args(args)
    preflight(cfg)  # data and partition problems: one line, before Prefect starts
    run_with_display(cfg)
    return 0


def _report(args: argparse.Namespace) -> int:
    from fedsim.report_cli import write_report

    return write_report(args)


def _serve(args: argparse.Namespace) -> int:
    from fedsim.serve_cli import serve_deployment

    return serve_deployment(args)


def _worker(args: argparse.Namespace) -> int:
    if args.worker_command == "up":
        from fedsim.local_fleet import fleet_up

        return fleet_up(args)
    if args.worker_command == "down":
        from fedsim.local_fleet import fleet_down

        return fleet_down(args)
    if args.worker_command == "key":
        from workers.auth import read_secret, write_worker_key

        write_worker_key(read_secret(args.token_file), args.id, args.out)
        return 0
    from fedsim.worker_cli import serve_worker

    return serve_worker(args)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_defaults()
    exit_on_sigterm()
    exit_on_second_interrupt()
    from fedsim.options import build_parser

    args = build_parser().parse_args(argv)
    from fl.errors import FedsimError
    from workers.memory import tune_malloc

    tune_malloc()  # large tensors (MPC shares, model states) reuse heap blocks

    try:
        if args.command == "run":
            return _run(args)
        if args.command == "worker":
            return _worker(args)
        if args.command == "report":
            return _report(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "new":
            from fedsim.new_project import new_project

            return new_project(args)
    except KeyboardInterrupt:
        print("fedsim: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if _INTERRUPTED.is_set():
            print("fedsim: interrupted", file=sys.stderr)
            return 130
        if isinstance(error, FedsimError):
            print(f"fedsim: error: {error}", file=sys.stderr)
            return 1
        raise
    return 2


if __name__ == "__main__":
    sys.exit(main())
