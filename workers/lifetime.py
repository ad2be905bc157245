"""Child processes that never outlive the process that started them.

A process started by fedsim (a level-4 worker, Prefect's temporary API server)
gets ``FEDSIM_PARENT_PID`` in its environment and calls :func:`die_with_parent`
first thing: Linux then sends it SIGTERM when the parent dies, even by
``kill -9``, when no ``finally`` or atexit hook of the parent can run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

__all__ = ["PARENT_PID_ENV", "child_environment", "die_with_parent"]

_PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "FEDSIM_PARENT_PID"


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment for a child that must die with it (plus ``extra``)."""
    return {**os.environ, **extra, PARENT_PID_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """In a started child: ask Linux for SIGTERM when the starting process dies.

    Called by the child itself at start-up (not as ``preexec_fn``, which is
    unsafe in a threaded parent); the parent-pid check closes the window in
    which the parent died before the request was made.
    """
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(expected):
        os.kill(os.getpid(), signal.SIGTERM)
