"""The soak's legitimate side: the worker under test, in its own process, and
the coordinator that trains on it in a loop while the hostile peers attack.
"""

from __future__ import annotations

import argparse
import json
import random
import select
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import psutil
import torch
from soak_peers import HOST, WORKER_ID, hostile_headers, mutation, seed_frames
from soak_tally import Tally

from fl.models import build_model, get_state
from fl.training import TrainConfig
from workers.auth import read_secret, write_secret
from workers.errors import ProtocolError, RemoteError, WorkerError
from workers.messages import ErrorReply, decode_message
from workers.ws_client import WebsocketWorker

TRAIN_SAMPLES, PARTITION = 2000, "0/2"
SAMPLES_HELD = 1000  # partition 0 of 2 of the first 2000
RSS_INTERVAL = 5.0
CONFIG = TrainConfig(epochs=1, batch_size=32, lr=0.05)


# ------------------------------------------------------------------ the coordinator


class Coordinator:
    """The legitimate coordinator's loop, in a thread."""

    def __init__(self, url: str, secret: bytes, args: argparse.Namespace, tally: Tally) -> None:
        self.url, self.secret, self.args, self.tally = url, secret, args, tally
        self.rounds = 0
        self.failures: list[str] = []
        self.round_seconds: list[float] = []
        self.objects_lost = 0
        self.base_objects: int | None = None
        self.count_mismatches: list[str] = []
        self.internal_errors: Counter[str] = Counter()  # by message
        self.bursts = 0
        self.state = get_state(build_model("mlp", seed=0))
        self.rng = random.Random(args.seed)
        self.seeds, self.headers = seed_frames(), hostile_headers()

    def run(self, deadline: float, stop: threading.Event) -> None:
        attempt = 0
        while time.monotonic() < deadline and not stop.is_set():
            attempt += 1
            start = time.perf_counter()
            try:
                self._round(attempt)
            except Exception as exc:  # every failure is counted, none stops the loop
                message = f"{type(exc).__name__}: {exc}"
                self.failures.append(message)
                if "did not answer" in message or "timed out" in message:
                    self.tally.hang(f"coordinator: {message}")
                stop.wait(0.2)  # a failing worker is not hammered
            else:
                self.rounds += 1
                self.round_seconds.append(time.perf_counter() - start)

    def _expect(self, worker: WebsocketWorker, expected: int, when: str) -> None:
        count = worker.ping().num_objects
        if count != expected:
            self.count_mismatches.append(f"{when}: {count} objects, expected {expected}")
            self.objects_lost += max(expected - count, 0)

    def _round(self, number: int) -> None:
        args = self.args
        worker = WebsocketWorker(
            WORKER_ID, self.url, secret=self.secret, timeout=args.request_timeout,
            connect_timeout=args.request_timeout,
        )  # fmt: skip
        with worker:
            count = worker.ping().num_objects
            if self.base_objects is None:
                self.base_objects = count
            elif count != self.base_objects:  # the worker's own data, nothing of old connections
                self.count_mismatches.append(f"fresh connection: {count} objects")
                self.objects_lost += max(self.base_objects - count, 0)
            base = count
            start = worker.send(self.state)
            self._expect(worker, base + 1, "after put")
            result, reply = worker.train("mlp", start, CONFIG, seed=number)
            if reply.num_samples != SAMPLES_HELD:
                raise WorkerError(f"trained on {reply.num_samples} samples, not {SAMPLES_HELD}")
            self._expect(worker, base + 2, "after train")
            trained = worker.get(result)
            if not isinstance(trained, dict) or set(trained) != set(self.state):
                raise WorkerError("the trained state has other keys than the model's")
            self._expect(worker, base + 1, "after get")
            created = 0  # by hostile frames that happened to be valid requests
            if args.burst_every and number % args.burst_every == 0:
                created = self._burst(worker, start.id, number)
            worker.delete([start])
            self._expect(worker, base + created, "after delete")

    def _burst(self, worker: WebsocketWorker, state_id: str, number: int) -> int:
        """Hostile frames on the authenticated connection; then every object must be intact.

        Returns how many objects the burst's frames created (a mutation may be a valid Put).
        """
        self.bursts += 1
        kept_value = torch.randn(7, 5, generator=torch.Generator().manual_seed(number))
        kept = worker.send(kept_value, obj_id=f"soak/kept/{number}")
        before = worker.ping().num_objects
        for index in range(self.args.burst_frames):
            self._hostile_frame(worker, index)
        # Nothing lost: both objects unchanged, and no fewer objects than before.
        for obj_id, value in ((kept.id, kept_value), (state_id, self.state)):
            self._check_unchanged(worker, obj_id, value, number)
        after = worker.ping().num_objects
        if after < before:
            self.objects_lost += before - after
            self.count_mismatches.append(f"burst {number}: {after} objects, {before} before")
        # Whatever the burst created goes with the connection; the kept tensor now.
        worker.delete([kept])
        return max(after - before, 0)

    def _hostile_frame(self, worker: WebsocketWorker, index: int) -> None:
        """One frame of a burst (16 in 20 mutated), its reply counted in the tally."""
        choice = index % 20
        if choice < 16:
            kind, frame = "mutated frame", mutation(self.rng, self.seeds)
        elif choice < 19:
            kind, frame = "hostile header", self.rng.choice(self.headers)
        else:
            kind, frame = "64 KiB frame", self.rng.randbytes(2**16)
        began = time.monotonic()
        try:
            reply = decode_message(worker._roundtrip(frame))
        except ProtocolError as exc:
            self.tally.add("post-auth", kind, 1, "undecodable reply")
            self.tally.note(f"undecodable reply to a {kind}: {exc}")
            return
        except WorkerError as exc:  # the connection is gone, and its objects with it
            self.tally.add("post-auth", kind, 1, f"connection lost ({exc})"[:120])
            self.objects_lost += 2
            raise
        if isinstance(reply, ErrorReply):
            answer = f"error {reply.code}"
            if reply.code == "internal":
                self.internal_errors[reply.message[:300]] += 1
        else:
            answer = reply.TAG
        self.tally.add("post-auth", kind, 1, answer, time.monotonic() - began)

    def _check_unchanged(
        self, worker: WebsocketWorker, obj_id: str, value: Any, number: int
    ) -> None:
        """Count ``obj_id`` as lost if the burst deleted it or changed its value."""
        try:
            got = worker.get(obj_id, delete=False)
        except RemoteError as exc:
            self.objects_lost += 1
            self.count_mismatches.append(f"burst {number}: {obj_id} gone ({exc})")
            return
        if not _same(got, value):
            self.objects_lost += 1
            self.count_mismatches.append(f"burst {number}: {obj_id} changed")


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, torch.Tensor):
        return isinstance(got, torch.Tensor) and torch.equal(got, want)
    return (
        isinstance(got, dict)
        and list(got) == list(want)
        and all(_same(got[key], want[key]) for key in want)
    )


# ------------------------------------------------------------------ the worker


class WorkerProcess:
    """The worker under test, its log, and its RSS sampled in a thread."""

    def __init__(self, folder: Path, log: Path | None) -> None:
        token = folder / "token"
        write_secret(token)
        self.secret = read_secret(token)
        self.log = log or folder / "worker.log"
        command = [sys.executable, "-m", "fedsim", "worker", "serve", "--id", WORKER_ID]
        command += ["--host", HOST, "--port", "0", "--token-file", str(token), "--threads", "1"]
        command += ["--partition", PARTITION, "--train-samples", str(TRAIN_SAMPLES)]
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log_file, stdin=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        self.samples: list[dict[str, float]] = []
        self._t0 = time.monotonic()
        self._sampler: threading.Thread | None = None

    def ready_port(self) -> int:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 300)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise SystemExit(f"the worker did not start:\n{self.log.read_text()[-3000:]}")
        return int(json.loads(line)["port"])

    def sample_until(self, stop: threading.Event) -> None:
        """RSS every RSS_INTERVAL s; sets ``stop`` if the worker exits."""

        def run() -> None:
            info = psutil.Process(self.process.pid)
            next_sample = time.monotonic()
            while not stop.is_set():
                if self.process.poll() is not None:
                    stop.set()
                    return
                if time.monotonic() >= next_sample:
                    self._sample(info)
                    next_sample += RSS_INTERVAL
                stop.wait(0.25)
            self._sample(info)

        self._sampler = threading.Thread(target=run, daemon=True)
        self._sampler.start()

    def _sample(self, info: psutil.Process) -> None:
        try:
            with info.oneshot():
                self.samples.append(
                    {
                        "t": round(time.monotonic() - self._t0, 2),
                        "rss_mb": info.memory_info().rss / 2**20,
                        "fds": info.num_fds(),
                        "threads": info.num_threads(),
                        "cpu_s": sum(info.cpu_times()[:2]),
                    }
                )
        except psutil.Error:
            pass

    def stop(self) -> int | None:
        """Terminate, then kill after 10 s; the exit code if it had exited before."""
        if self._sampler is not None:
            self._sampler.join(timeout=5)
        exited = self.process.poll()
        if exited is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log_file.close()
        return exited


# ------------------------------------------------------------------ its log


def log_findings(log: Path) -> dict[str, Any]:
    """What the worker's log holds: lines per level, tracebacks, 1011 closes.

    Read line by line, so that however long the log grew, it is never held whole."""
    levels: Counter[str] = Counter()
    before: deque[str] = deque(maxlen=2)
    first_traceback: list[str] = []
    lines = tracebacks = count_1011 = 0
    lines_1011: list[str] = []
    with log.open(errors="replace") as handle:
        for line in handle:
            lines += 1
            line = line.rstrip("\n")
            for level in ("INFO", "WARNING", "ERROR", "CRITICAL"):
                if f" {level} " in line:
                    levels[level] += 1
                    break
            if "Traceback" in line:
                tracebacks += 1
                if not first_traceback:
                    first_traceback = [*before, line]
            elif first_traceback and len(first_traceback) < 40 and tracebacks == 1:
                first_traceback.append(line)
            if " 1011 " in line:
                count_1011 += 1
                if len(lines_1011) < 5:
                    lines_1011.append(line)
            before.append(line)
    return {
        "lines": lines,
        "bytes": log.stat().st_size,
        "levels": dict(levels),
        "tracebacks": tracebacks,
        "code_1011": count_1011,
        "first_traceback": "\n".join(first_traceback),
        "lines_1011": lines_1011,
    }
