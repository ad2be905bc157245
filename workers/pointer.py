"""Pointers: client-side handles to objects that live on a worker.

Operators and tensor methods on a :class:`Pointer` run remotely (one ``RunOp``
each) and return new pointers, so ``(x @ w + b).relu()`` computes on the worker
and only ``.get()`` brings a value back.

Lifetime: a pointer *owns* its remote object. ``get()`` (which frees it
remotely) or ``Worker.delete`` kills the pointer; using a dead pointer raises
WorkerError. When a live owning pointer is garbage collected, ``__del__`` only
appends its id to the worker's pending-deletion list — it never sends (it may
run at any point, even in the middle of another request) and never raises. The
worker sends pending ids as one batched ``DeleteObjects`` message, so dropping
many temporaries costs one round trip, not one each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workers.codec import Ref
from workers.errors import WorkerError
from workers.operators import OperatorMixin

if TYPE_CHECKING:
    from workers.base import Worker

__all__ = ["PlanPointer", "Pointer"]


class Pointer(OperatorMixin):
    """A handle to the object ``obj_id`` on ``worker``.

    ``shape``/``dtype`` are known when the worker reported them (sent tensors,
    op results) and None otherwise. ``owned=False`` makes a pointer that never
    frees its object — for objects the worker owns, such as its data partition.
    """

    def __init__(
        self,
        worker: Worker,
        obj_id: str,
        *,
        shape: tuple[int, ...] | None = None,
        dtype: str | None = None,
        owned: bool = True,
    ) -> None:
        self._worker = worker
        self._id = obj_id
        self.shape = shape
        self.dtype = dtype
        self._owned = owned
        self._alive = True

    @property
    def worker(self) -> Worker:
        return self._worker

    @property
    def id(self) -> str:
        return self._id

    @property
    def alive(self) -> bool:
        """False once the object was retrieved with delete, moved or deleted."""
        return self._alive

    def get(self, *, delete: bool = True) -> Any:
        """Bring the value back; by default free it remotely, which kills this pointer."""
        return self._worker.get(self, delete=delete)

    def delete(self) -> None:
        """Free the object now, in one ``DeleteObjects`` that also carries pending deletions.

        Simply dropping the pointer frees it too, lazily in a batch; call this
        for big objects (model states) that should not wait for the next batch.
        """
        self._worker.delete([self])

    def move(self, dest: Worker) -> Pointer:
        """Move the object to ``dest``; returns the new pointer, kills this one."""
        return self._worker.move(self, dest)

    def _op(self, op: str, *args: Any, **kwargs: Any) -> Pointer:
        return self._worker.run_op(op, *args, **kwargs)

    def id_on(self, worker: Worker) -> str:
        """The object's id, checked to be alive on ``worker`` (for a request to it)."""
        return self._ref(worker).obj_id

    def _ref(self, worker: Worker) -> Ref:
        """This pointer as a wire reference for a request to ``worker``."""
        if not self._alive:
            raise WorkerError(f"pointer {self._id!r} is dead (its object was retrieved or freed)")
        if self._worker is not worker:
            raise WorkerError(
                f"pointer {self._id!r} lives on {self._worker.id!r}, not {worker.id!r}: "
                "move it first"
            )
        return Ref(self._id)

    def _kill(self) -> None:
        self._alive = False

    def _revive(self) -> None:
        self._alive = True

    def __del__(self) -> None:
        try:
            if self._alive and self._owned:
                self._alive = False
                self._worker._discard(self._id)
        except Exception:  # a finalizer must never raise (even at interpreter exit)
            pass

    def __repr__(self) -> str:
        state = "" if self._alive else " dead"
        meta = f" {self.dtype}{list(self.shape)}" if self.shape is not None else ""
        return f"<Pointer {self._id!r} on {self._worker.id!r}{meta}{state}>"


@dataclass(frozen=True)
class PlanPointer:
    """A plan stored on ``worker``; call it with pointers to run it there."""

    worker: Worker
    plan_id: str
    num_outputs: int

    def __call__(self, *args: Pointer | str) -> list[Pointer]:
        return self.worker.run_plan(self, *args)
