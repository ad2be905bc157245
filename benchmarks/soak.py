"""Soak: one websocket worker under hostile load while a coordinator trains on it.

Starts one worker process (``fedsim worker serve``, token file, partition 0/2 of
the first 2000 Fashion-MNIST samples, one torch thread) on 127.0.0.1 and, for
``--seconds``, runs at the same time:

- a legitimate coordinator (127.0.0.1) in a loop: connect with the secret, put
  the MLP's state, train one epoch, get the result back, check the ping's object
  count at every step, close. Every ``--burst-every`` rounds it also sends, on its
  own authenticated connection, a burst of ``--burst-frames`` hostile frames
  (mutations of valid requests, hand-written hostile headers, random 64 KiB
  frames): each must get a decodable reply, and afterwards every object of the
  connection must still be there, unchanged;
- hostile unauthenticated peers from 127.0.0.3..127.0.0.6 over raw sockets:
  random bytes, mutated valid frames, hostile headers (ints beyond int64, a
  tensor of shape [0, 2**63], lone surrogates...), text frames and 64 KiB frames
  as the first frame, frames packed into the same TCP write as the HTTP upgrade
  request, and silent peers that hold a handshake open until dropped. Each is
  counted with how the worker answered it.

The hostile peers run in a child process by default (``--hostile-in``). In
threads of this process they share its GIL with the coordinator, which then
completes fewer rounds, with slower worst rounds, and the peers send fewer
frames; the worker process is the bottleneck either way. The defaults pass the
target of 100,000 hostile frames in 10 minutes with a wide margin while the
coordinator still completes rounds (docs/levels.md, "Under attack"). Silent peers
reconnect ``--silent-pause`` s after each drop; with 0 they churn, evicting each
other hundreds of times a second. The worker's lines about strangers (refusals,
dropped and failed handshakes) pass a quota of 20 per 10 s (``PEER_LOG_BURST``
per ``PEER_LOG_PERIOD_SECONDS`` in workers/peers.py) and websockets'
per-connection INFO lines are off; the report gives the log's size (it is kept
in a temporary folder unless ``--log``). The worker's RSS, open files and
threads are sampled every 5 s. The run fails (exit 1) on any crash (the worker
exited, or its log holds a traceback or a 1011 close), hang (a request or
socket operation hit its timeout), lost object, accepted stranger, or
``internal`` error reply. Everything runs on loopback and everything started
is stopped at the end, on Ctrl-C too.

Beside this entry point: the hostile peers in soak_peers.py, the coordinator
and the worker's process in soak_coordinator.py, the counters both fill in
soak_tally.py, the report in soak_report.py.

    .venv/bin/python benchmarks/soak.py [--seconds 600] [--write]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from queue import Empty
from typing import Any

from soak_coordinator import Coordinator, WorkerProcess, log_findings
from soak_peers import HOST, join_all, run_hostile, run_hostile_in_child
from soak_report import report
from soak_tally import Tally


def main() -> int:
    args = _parse_args()
    command = ".venv/bin/python " + shlex.join(sys.argv)

    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="fedsim-soak-") as tmp:
        worker = WorkerProcess(Path(tmp), args.log)
        try:
            result = _soak(args, tally, worker)
        except KeyboardInterrupt:
            result = None
        finally:
            exited = worker.stop()  # terminate, kill after 10 s; also on Ctrl-C
            findings = log_findings(worker.log)
    if result is None:
        print("interrupted: the worker and every peer were stopped", file=sys.stderr)
        return 130
    seconds, coordinator = result
    return report(args, command, seconds, tally, coordinator, worker, exited, findings)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument(
        "--threads-per-source",
        type=int,
        default=2,
        help="hostile peers sending frames, per source address (4 addresses)",
    )
    parser.add_argument(
        "--silent-per-source",
        type=int,
        default=3,
        help="silent peers holding a handshake open, per source address",
    )
    parser.add_argument(
        "--burst-every",
        type=int,
        default=1,
        help="coordinator rounds between bursts on its own connection (0: none)",
    )
    parser.add_argument("--burst-frames", type=int, default=300)
    parser.add_argument("--hostile-in", choices=("process", "thread"), default="process")
    parser.add_argument(
        "--op-timeout",
        type=float,
        default=20.0,
        help="seconds any hostile socket operation may take (else a hang)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=120.0,
        help="seconds a coordinator request or connection may take",
    )
    parser.add_argument(
        "--silent-pause",
        type=float,
        default=0.5,
        help="seconds a silent peer waits before it reconnects (0: churn)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--log",
        type=Path,
        default=None,
        help="keep the worker's log there (default: a temporary folder)",
    )
    parser.add_argument(
        "--write", action="store_true", help="write benchmarks/results/soak.md and soak.json"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.md"))
    return parser.parse_args()


def _soak(
    args: argparse.Namespace, tally: Tally, worker: WorkerProcess
) -> tuple[float, Coordinator]:
    """Run the coordinator and the hostile peers against ``worker`` until the time is up.

    Every thread and child process started here is stopped before it returns or
    raises (KeyboardInterrupt included)."""
    port = worker.ready_port()
    coordinator = Coordinator(f"ws://{HOST}:{port}", worker.secret, args, tally)
    stop = threading.Event()
    hostile_args = (port, args.seconds, args.threads_per_source, args.silent_per_source,
                    args.silent_pause, args.op_timeout, args.seed)  # fmt: skip
    context = multiprocessing.get_context("spawn")
    queue: Any = context.Queue()
    child: Any = None
    child_stop: Any = None
    threads: list[threading.Thread] = []
    hostile_result: dict[str, Any] = {}
    interrupted = False
    started = time.monotonic()
    try:
        if args.hostile_in == "process":
            child_stop = context.Event()
            child = context.Process(
                target=run_hostile_in_child, args=(queue, child_stop, *hostile_args)
            )
            child.start()
        else:
            threads.append(
                threading.Thread(
                    target=lambda: hostile_result.update(run_hostile(stop, *hostile_args)),
                    daemon=True,
                )
            )
        started = time.monotonic()
        _run_until_time_is_up(args, started, worker, coordinator, stop, threads)
        if worker.process.poll() is not None:
            tally.note(
                f"the worker exited during the run, after {time.monotonic() - started:.0f} s"
            )
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        ended = time.monotonic()
        stop.set()
        if child is not None:
            hostile_result.update(_stop_child(child, child_stop, queue, interrupted, args, tally))
        join_all(threads, 5 if interrupted else max(args.request_timeout, args.op_timeout) + 5)
        if any(thread.is_alive() for thread in threads):
            tally.note("a coordinator or hostile thread was still running at the end")
        if hostile_result:
            tally.merge(hostile_result)
    return ended - started, coordinator


def _run_until_time_is_up(
    args: argparse.Namespace, started: float, worker: WorkerProcess, coordinator: Coordinator,
    stop: threading.Event, threads: list[threading.Thread],
) -> None:  # fmt: skip
    """Start the coordinator and ``threads``, then wait for the deadline or ``stop``."""
    deadline = started + args.seconds
    worker.sample_until(stop)
    threads.append(threading.Thread(target=coordinator.run, args=(deadline, stop), daemon=True))
    for thread in threads:
        thread.start()
    while time.monotonic() < deadline and not stop.is_set():
        stop.wait(0.5)


def _stop_child(
    child: Any, child_stop: Any, queue: Any, interrupted: bool, args: argparse.Namespace,
    tally: Tally,
) -> dict[str, Any]:  # fmt: skip
    """Stop the hostile process (join, else terminate, else kill); its tally, unless interrupted."""
    child_stop.set()
    result: dict[str, Any] = {}
    if not interrupted:  # before join: a child exits only once its queue is flushed
        result = _child_tally(child, queue, args.op_timeout + 30)
        if not result:
            tally.note(f"no tally came back from the hostile process ({child.exitcode})")
    child.join(timeout=10)
    if child.is_alive():
        child.terminate()
        child.join(timeout=10)
    if child.is_alive():
        child.kill()
        child.join()
    return result


def _child_tally(child: Any, queue: Any, seconds: float) -> dict[str, Any]:
    """The hostile process's tally, waiting at most ``seconds``; {} if it died without one."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            result: dict[str, Any] = queue.get(timeout=0.5)
            return result
        except Empty:
            if not child.is_alive():
                try:
                    result = queue.get(timeout=1)
                    return result
                except Empty:
                    return {}
    return {}


if __name__ == "__main__":
    sys.exit(main())
