"""What a federation learns — a :class:`Task` — and how ``--task`` finds one.

A task gives the model (a factory: every client and the server build their own),
the data (the whole train and test splits; fedsim cuts the train split into the
clients' partitions with ``--partition``, the same at every level, and a worker
that loads its own data cuts its partition from the same split), the loss, and
optionally its own local train and evaluate steps. The built-in Fashion-MNIST
and MNIST models (``--dataset``, ``--model``) are tasks made by
:func:`image_task`; ``--task package.module:name`` or ``--task path/file.py:name``
names the user's own, a :class:`Task` or a function of no arguments that returns one.

Workers never import a task a message names. A worker process loads its task
from its own command line (``fedsim worker serve --task``) or, in process, from
the coordinator's config; a request names the model by its *key* — the built-in
model's name or the task's reference — and a key this process did not load is
refused (:func:`model_task`). Model state crosses as tensors, never as code.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fl.data import DATASETS, Split, dataset_checksum, load_split
from fl.errors import ConfigError, FedsimError
from fl.imports import import_module_at
from fl.models import MODELS, build_model
from fl.training import EvalResult, Loss, TrainConfig, TrainResult, evaluate, train_local

__all__ = [
    "EvalStep",
    "Task",
    "TaskError",
    "TrainStep",
    "code_digest",
    "data_digest",
    "data_task",
    "experiment_task",
    "fingerprint_difference",
    "forget_task_splits",
    "image_task",
    "load_task",
    "model_task",
    "task_fingerprint",
    "task_split",
]

# A task's own local training: (model, the client's data, the round's config, the
# client's seeded generator) → what it did. The model is trained in place.
TrainStep = Callable[[nn.Module, Split, TrainConfig, torch.Generator], TrainResult]
# A task's own evaluation: (model, data, batch size) → loss and accuracy.
EvalStep = Callable[[nn.Module, Split, int], EvalResult]


class TaskError(FedsimError):
    """A task's code failed or gave something fedsim cannot use; the message names the task."""


@dataclass(frozen=True)
class Task:
    """A model, its data and its loss — what ``--task`` names.

    ``model()`` returns a fresh ``nn.Module`` (its initial weights drawn from
    torch's global generator, which fedsim seeds); ``data("train")`` and
    ``data("test")`` return a :class:`~fl.data.Split` or an ``(x, y)`` pair of
    tensors, ``y`` int64 class labels (partitioners and accuracy read them);
    ``loss(output, y)`` is the batch's mean. ``train`` and ``evaluate``, if
    given, replace fedsim's SGD loop and its accuracy (see :data:`TrainStep`,
    :data:`EvalStep`): a task that trains otherwise — say, a closed-form step —
    runs at every level without DP-SGD or FedProx, which live in the SGD loop.
    ``digest()``, if given, names the data cheaply (a file's sha256, say); by
    default the coordinator and each worker hash both splits' tensors and
    compare before round 1.
    """

    model: Callable[[], nn.Module]
    data: Callable[[str], Split | tuple[torch.Tensor, torch.Tensor]]
    loss: Loss = F.cross_entropy
    train: TrainStep | None = None
    evaluate: EvalStep | None = None
    digest: Callable[[], str] | None = None
    name: str = ""  # shown in errors; load_task sets it to the reference

    def build(self, seed: int | None = None) -> nn.Module:
        """A fresh model; with ``seed`` its init is deterministic and the global RNG untouched."""
        if seed is None:
            return self._checked_model()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._checked_model()

    def _checked_model(self) -> nn.Module:
        try:
            module = self.model()
        except Exception as exc:
            raise TaskError(f"task {self.name!r}: model() failed: {exc}") from None
        if not isinstance(module, nn.Module):
            raise TaskError(f"task {self.name!r}: model() returned {type(module).__name__}")
        return module

    def run_train(
        self, model: nn.Module, data: Split, config: TrainConfig, generator: torch.Generator
    ) -> TrainResult:
        """One client's local training: the task's own step, or fedsim's SGD on its loss.

        Whatever the task's code raises (its model's forward, its loss, its step)
        becomes a TaskError naming the task.
        """
        try:
            if self.train is None:
                return train_local(model, data, config, generator, loss=self.loss)
            result = self.train(model, data, config, generator)
        except FedsimError:
            raise
        except Exception as exc:
            raise TaskError(
                f"task {self.name!r}: training failed: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(result, TrainResult):
            raise TaskError(f"task {self.name!r}: train() returned {type(result).__name__}")
        return result

    def run_evaluate(self, model: nn.Module, data: Split, batch_size: int = 1000) -> EvalResult:
        """Loss and accuracy of ``model`` on ``data``: the task's own step, or fedsim's
        (a failure is a TaskError naming the task)."""
        try:
            if self.evaluate is None:
                return evaluate(model, data, batch_size=batch_size, loss=self.loss)
            result = self.evaluate(model, data, batch_size)
        except FedsimError:
            raise
        except Exception as exc:
            raise TaskError(
                f"task {self.name!r}: evaluation failed: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(result, EvalResult):
            raise TaskError(f"task {self.name!r}: evaluate() returned {type(result).__name__}")
        return result


def _builtin_data_elsewhere(split: str) -> Split:
    raise ConfigError("a built-in model's data comes from --dataset, not from its model key")


@functools.cache
def _model_only(model: str) -> Task:
    """A built-in model as a worker knows it: the data is the worker's own."""
    return Task(functools.partial(build_model, model), _builtin_data_elsewhere, name=model)


@functools.lru_cache(maxsize=16)
def image_task(dataset: str, model: str, data_dir: str | None = None) -> Task:
    """A built-in task: ``--dataset`` (Fashion-MNIST or MNIST) with ``--model``."""
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset {dataset!r} is not one of: {', '.join(DATASETS)}")
    if model not in MODELS:
        raise ConfigError(f"--model {model!r} is not one of: {', '.join(MODELS)}")

    def data(split: str) -> Split:
        return load_split(dataset, train=split == "train", data_dir=data_dir)

    def digest() -> str:
        return dataset_checksum(dataset, data_dir)

    # Named after the data alone: a worker serving --dataset holds every built-in
    # model (all in fl.models, so one code digest) and trains whichever it is asked.
    return Task(MODELS[model], data, digest=digest, name=dataset)


# Tasks this process loaded, by reference: the only user code a request can reach.
_LOADED: dict[str, Task] = {}
_LOADING = threading.Lock()


def load_task(reference: str) -> Task:
    """The task ``reference`` (``package.module:name`` or ``path/file.py:name``) names.

    Imported once per process; a bad reference, an import that fails, or an
    object that is no task is one ConfigError line naming the reference.
    """
    with _LOADING:
        if reference in _LOADED:
            return _LOADED[reference]
        option = f"--task {reference!r}"
        where, sep, attribute = reference.strip().rpartition(":")
        if not sep or not where or not attribute.isidentifier():
            raise ConfigError(f"{option} is not package.module:name or path/file.py:name")
        found = getattr(import_module_at(option, where), attribute, None)
        if found is None:
            raise ConfigError(f"{option}: {where} has no {attribute!r}")
        if callable(found) and not isinstance(found, Task):
            try:
                found = found()
            except Exception as exc:  # the user's function: any failure is one line
                raise ConfigError(f"{option}: {attribute}() failed: {exc}") from None
        if not isinstance(found, Task):
            raise ConfigError(
                f"{option}: {attribute} is a {type(found).__name__}, not a fl.tasks.Task "
                "(or a function that returns one)"
            )
        task = dataclasses.replace(found, name=reference)
        _LOADED[reference] = task
        return task


def model_task(key: str) -> Task:
    """The task whose model a request names by ``key``; never imports anything.

    A built-in model's name, or the reference of a task this process loaded
    (:func:`load_task`); anything else is a ConfigError (a worker replies with it).
    """
    if key in MODELS:
        return _model_only(key)
    with _LOADING:
        task = _LOADED.get(key)
    if task is None:
        raise ConfigError(
            f"unknown model {key!r}: this worker has {', '.join(MODELS)} and the task it was "
            f"started with ({', '.join(_LOADED) or 'none'}; fedsim worker serve --task)"
        )
    return task


def experiment_task(task: str | None, dataset: str, model: str, data_dir: str | None) -> Task:
    """The run's task: ``--task``'s, else the built-in of ``--dataset`` and ``--model``."""
    return load_task(task) if task else image_task(dataset, model, data_dir)


def data_task(key: str, data_dir: str | None) -> Task:
    """The task whose data ``key`` names (``fl.partition.Partitioning.dataset``): a
    built-in dataset (whose model does not matter here) or a task's reference."""
    return image_task(key, "cnn", data_dir) if key in DATASETS else load_task(key)


@functools.lru_cache(maxsize=16)
def _whole_split(task: Task, split: str) -> Split:
    try:
        given = task.data(split)
    except FedsimError:
        raise
    except Exception as exc:
        raise TaskError(f"task {task.name!r}: data({split!r}) failed: {exc}") from None
    if isinstance(given, tuple) and len(given) == 2:
        given = Split(*given)
    if not isinstance(given, Split):
        raise TaskError(
            f"task {task.name!r}: data({split!r}) returned {type(given).__name__}, "
            "not a Split or an (x, y) pair"
        )
    x, y = given.x, given.y
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise TaskError(f"task {task.name!r}: data({split!r}) holds no tensors")
    if y.dtype != torch.int64 or y.ndim != 1 or x.ndim < 1 or x.shape[0] != y.shape[0]:
        raise TaskError(
            f"task {task.name!r}: data({split!r}) gave x {tuple(x.shape)} and y "
            f"{tuple(y.shape)} {y.dtype}: y must be int64 labels, one per row of x"
        )
    if len(y) == 0:
        raise TaskError(f"task {task.name!r}: data({split!r}) is empty")
    return Split(x.contiguous(), y.contiguous())


def forget_task_splits() -> None:
    """Drop the whole splits this process's tasks gave (fl.task_data.forget_loaded_data)."""
    _whole_split.cache_clear()


def task_split(task: Task, *, train: bool, limit: int | None = None) -> Split:
    """The task's train or test split, its first ``limit`` samples (cached per process;
    the tensors are shared: callers must not mutate them)."""
    split = "train" if train else "test"
    whole = _whole_split(task, split)
    if limit is None:
        return whole
    if limit < 1:
        raise ConfigError(f"sample limit must be >= 1, got {limit}")
    if limit > len(whole):
        raise ConfigError(
            f"sample limit {limit} exceeds the {len(whole)} {split} samples of {task.name}"
        )
    return Split(whole.x[:limit], whole.y[:limit])


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
        try:
            return str(task.digest())
        except FedsimError:
            raise
        except Exception as exc:
            raise TaskError(f"task {task.name!r}: digest() failed: {exc}") from None
    digest = hashlib.sha256()
    for split in ("train", "test"):
        whole = _whole_split(task, split)
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
        # By file name and content, not path: two checkouts of one task agree.
        digest.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes())
    return digest.hexdigest()
