"""The in-process worker: a :class:`MessageWorker` whose transport is a function call.

A VirtualWorker still encodes every request and decodes every reply — it does
not share Python objects with its core. That costs a copy per transfer (a few
ms for a 1.7 M-parameter state) but buys two properties the levels rely on:
virtual and websocket runs exercise the same protocol code, and their
``bytes_sent``/``bytes_received`` are counted identically; and the coordinator
can never mutate a worker's objects through a shared reference.

The copies it saves are the ones no property needs. The core copies a request
once into a buffer of its own and decodes it in place; a ``Fit`` of a
broadcast state trains those views and answers over the same buffer
(``WorkerCore.handle_bytes``); and each reply is a fresh ``bytearray`` that only
this client ever sees, so its tensors are decoded in place (``decode_frame``
``in_place``). A client's round thus copies its model once, into the worker,
and every frame is still built, counted and validated.
"""

from __future__ import annotations

from workers.base import DELETE_BATCH_SIZE
from workers.core import WorkerCore
from workers.errors import WorkerError
from workers.message_worker import MessageWorker

__all__ = ["VirtualWorker"]


class VirtualWorker(MessageWorker):
    """A worker living in this process; ``core`` defaults to an empty ``WorkerCore``."""

    _replies_in_place = True  # handle_bytes encodes every reply into a new bytearray

    def __init__(
        self,
        worker_id: str,
        *,
        core: WorkerCore | None = None,
        delete_batch_size: int = DELETE_BATCH_SIZE,
    ) -> None:
        if core is not None and core.worker_id != worker_id:
            raise WorkerError(f"core {core.worker_id!r} given to worker {worker_id!r}")
        super().__init__(worker_id, delete_batch_size=delete_batch_size)
        self.core = core if core is not None else WorkerCore(worker_id)

    def _roundtrip(self, data: bytes) -> bytes | bytearray:
        return self.core.handle_bytes(data)
