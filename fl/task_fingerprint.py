"""A task's fingerprint: one line naming its code and its data, compared across processes.

The coordinator compares its fingerprint with each websocket worker's (in
``Pong``) and each Dask worker's before round 1: a worker that would train
other code or other data than the coordinator evaluates is refused, the line
saying which (:func:`fingerprint_difference`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from pathlib import Path

from fl.task_data import whole_split
from fl.tasks import Task

__all__ = ["code_digest", "data_digest", "fingerprint_difference", "task_fingerprint"]


def task_fingerprint(task: Task) -> str:
    """One line naming the task's code and data, compared by the coordinator with each
    worker's before round 1: ``<name> code=<sha256…> data=<sha256…>``."""
    return f"{task.name} code={code_digest(task)[:16]} data={data_digest(task)[:16]}"


def fingerprint_difference(theirs: str, ours: str) -> str:
    """What differs between another process's :func:`task_fingerprint` and ours, as the
    rest of a sentence that starts with that process's name."""

    def parts(fingerprint: str) -> tuple[str, dict[str, str]]:
        name, *rest = fingerprint.split(" ") if fingerprint else ("",)
        return name, dict(part.split("=", 1) for part in rest if "=" in part)

    (their_name, their_parts), (name, our_parts) = parts(theirs), parts(ours)
    if their_name != name:
        return f"runs task [{their_name or 'unknown'}], this run's is {name}: start it with --task"
    for part, remedy in (("data", "the same data"), ("code", "the same task files")):
        if their_parts.get(part) != our_parts.get(part):
            return (
                f"runs task {name} with other {part} than this process (sha256 "
                f"{their_parts.get(part, '?')}… against {our_parts.get(part, '?')}…): "
                f"give it {remedy}"
            )
    return f"answers task fingerprint [{theirs}], this process's is [{ours}]"


@functools.lru_cache(maxsize=16)
def data_digest(task: Task) -> str:
    """sha256 (hex) naming the task's data: its ``digest()``, else both splits' tensors."""
    if task.digest is not None:
        with task.blamed("digest()"):
            return str(task.digest())
    digest = hashlib.sha256()
    for split in ("train", "test"):
        whole = whole_split(task, split)
        for tensor in (whole.x, whole.y):
            digest.update(f"{split} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=16)
def code_digest(task: Task) -> str:
    """sha256 over the source files of the modules the task's functions come from
    (torch's own excepted: its version is compared elsewhere)."""
    files: set[str] = set()
    for part in (task.model, task.data, task.loss, task.train, task.evaluate, task.digest):
        while isinstance(part, functools.partial):
            part = part.func
        module = inspect.getmodule(part) if part is not None else None
        if module is None or module.__name__.split(".")[0] == "torch":
            continue
        path = getattr(module, "__file__", None)
        if path:
            files.add(str(Path(path).resolve()))
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: Path(p).name):
        # By file name and content, not path: two checkouts agree (the reference naming
        # the task is compared too, and must be spelled the same on both sides).
        digest.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes())
    return digest.hexdigest()
