"""Protocols: named sequences of steps over roles, bound to concrete workers at run time.

A multi-party procedure (secure aggregation, encrypted inference) is written
once as a :class:`Protocol` — which roles take part (clients, committee,
dealer...), and the ordered steps, each a function of the running
:class:`ProtocolRun`. The steps talk to workers only through the
:class:`~workers.base.Worker` interface (``party_op`` and pointers), so the
same protocol runs unchanged on in-process virtual workers and on websocket
workers in other processes or on other hosts, as PySyft 0.2's Protocols did.

``ProtocolRun`` times every step, so a flow can report where the seconds went
(sharing, relaying, opening) without instrumenting the protocol itself.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from mpc.errors import MPCError
from workers.base import Worker
from workers.party import FORGET

__all__ = ["Protocol", "ProtocolAborted", "ProtocolRun", "Step"]

T = TypeVar("T")


@dataclass(frozen=True)
class Step:
    """One step of a protocol: ``run`` acts mainly for the workers of ``role``.

    ``opens`` marks a step that reveals values (to the coordinator or the
    parties): once such a step has begun, a failed run must not be repeated
    over a subset of the inputs — two openings over different sets would give
    away their difference (see :class:`ProtocolAborted`).
    """

    name: str
    role: str
    run: Callable[[ProtocolRun], None]
    opens: bool = False


class ProtocolAborted(MPCError):
    """A run failed after a value was opened: never retry it over other inputs."""


@dataclass(frozen=True)
class Protocol:
    """A named sequence of steps over roles; :meth:`bind` gives a runnable instance."""

    name: str
    roles: tuple[str, ...]
    steps: tuple[Step, ...]
    # Run when a run fails before anything was opened, before its secrets are
    # forgotten (best effort): e.g. secure aggregation's release of the inputs.
    abandon: Callable[[ProtocolRun], None] | None = None

    def __post_init__(self) -> None:
        unknown = {step.role for step in self.steps} - set(self.roles)
        if unknown:
            raise MPCError(f"protocol {self.name!r}: steps for undeclared roles {sorted(unknown)}")

    def bind(
        self,
        roles: Mapping[str, Sequence[Worker]],
        *,
        parallel: bool = False,
        session: str | None = None,
    ) -> ProtocolRun:
        """Bind each role to workers; ``parallel`` runs per-worker calls of a step concurrently."""
        missing = set(self.roles) - set(roles)
        extra = set(roles) - set(self.roles)
        if missing or extra:
            raise MPCError(
                f"protocol {self.name!r} needs roles {list(self.roles)}; "
                f"missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        for role, workers in roles.items():
            if not workers:
                raise MPCError(f"protocol {self.name!r}: role {role!r} has no workers")
            ids = [w.id for w in workers]
            if len(set(ids)) != len(ids):
                raise MPCError(f"protocol {self.name!r}: role {role!r} lists a worker twice: {ids}")
        return ProtocolRun(
            self,
            {role: tuple(workers) for role, workers in roles.items()},
            parallel=parallel,
            session=session or f"{self.name}-{secrets.token_hex(8)}",
        )


@dataclass
class ProtocolRun:
    """One execution of a protocol: the bound roles, scratch state and step timings."""

    protocol: Protocol
    roles: dict[str, tuple[Worker, ...]]
    parallel: bool = False
    session: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def workers(self, role: str) -> tuple[Worker, ...]:
        return self.roles[role]

    def one(self, role: str) -> Worker:
        """The single worker bound to ``role``."""
        workers = self.roles[role]
        if len(workers) != 1:
            raise MPCError(f"role {role!r} is bound to {len(workers)} workers, expected one")
        return workers[0]

    def each(self, items: Sequence[T], fn: Callable[[T], Any]) -> list[Any]:
        """``fn`` over ``items`` (typically a role's workers), concurrently when parallel.

        Results come back in ``items`` order; the first exception is raised
        after every call has finished, so no call is left running.
        """
        if not self.parallel or len(items) < 2:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=len(items)) as pool:
            futures = [pool.submit(fn, item) for item in items]
        return [future.result() for future in futures]

    def public_key(self, worker: Worker) -> torch.Tensor:
        """``worker``'s session public key (``sessions.exchange_keys``), as party steps take it."""
        data: bytes = self.state["public_keys"][worker.id]
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)

    def all_workers(self) -> list[Worker]:
        """Every bound worker once, in role order."""
        seen: dict[str, Worker] = {}
        for workers in self.roles.values():
            for worker in workers:
                seen.setdefault(worker.id, worker)
        return list(seen.values())

    def run(self) -> ProtocolRun:
        """Run every step in order; always asks the workers to forget the session's secrets."""
        opened = False
        try:
            for step in self.protocol.steps:
                opened = opened or step.opens
                start = time.perf_counter()
                try:
                    step.run(self)
                except MPCError:
                    raise
                except Exception as exc:
                    if opened:
                        raise ProtocolAborted(
                            f"{self.protocol.name}: step {step.name!r} failed after values were "
                            f"opened ({type(exc).__name__}: {exc}); the run is not repeated"
                        ) from exc
                    if self.protocol.abandon is not None:
                        # Clean-up must not hide the error that ended the run.
                        with contextlib.suppress(Exception):
                            self.protocol.abandon(self)
                    raise
                self.seconds[step.name] = self.seconds.get(step.name, 0.0) + (
                    time.perf_counter() - start
                )
        finally:
            self.forget()
        return self

    def forget(self) -> None:
        """Drop this session's secrets on every bound worker (best effort: a dead worker
        has forgotten them already)."""
        for worker in self.all_workers():
            if worker.closed:
                continue
            # Clean-up must not hide the error that ended the run.
            with contextlib.suppress(Exception):
                worker.party_op(FORGET, session=self.session)
