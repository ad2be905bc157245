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
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fl.data import DATASETS, Split, dataset_checksum, load_split, resolve_data_root
from fl.errors import ConfigError, FedsimError
from fl.imports import import_module_at
from fl.models import MODELS, build_model
from fl.training import (
    EvalResult,
    Loss,
    TrainConfig,
    TrainResult,
    evaluate,
    train_local,
    with_update_clip,
)

__all__ = [
    "EvalStep",
    "Task",
    "TaskError",
    "TrainStep",
    "data_task",
    "experiment_task",
    "image_task",
    "load_task",
    "model_task",
]

# A task's own local training: (model, the client's data, the round's config, the
# client's seeded generator) → what it did. The model is trained in place.
TrainStep = Callable[[nn.Module, Split, TrainConfig, torch.Generator], TrainResult]
# A task's own evaluation: (model, data, batch size) → loss and accuracy.
EvalStep = Callable[[nn.Module, Split, int], EvalResult]


class TaskError(FedsimError):
    """A task's code failed or gave something fedsim cannot use; the message names the task."""


@dataclass(frozen=True, eq=False)  # by identity: the caches key on it, fields may not hash
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

    @contextmanager
    def blamed(self, what: str) -> Iterator[None]:
        """Run the task's code: anything it raises but fedsim's own errors becomes one
        TaskError naming the task and ``what`` it was doing."""
        try:
            yield
        except FedsimError:
            raise
        except Exception as exc:
            raise TaskError(
                f"task {self.name!r}: {what} failed: {type(exc).__name__}: {exc}"
            ) from None

    def build(self, seed: int | None = None) -> nn.Module:
        """A fresh model; with ``seed`` its init is deterministic and the global RNG untouched."""
        if seed is None:
            return self._checked_model()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._checked_model()

    def _checked_model(self) -> nn.Module:
        with self.blamed("model()"):
            module = self.model()
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
        with self.blamed("training"):
            if self.train is None:
                return train_local(model, data, config, generator, loss=self.loss)
            # Client-level DP's clip is the worker's promise, whoever's step trained.
            result = with_update_clip(
                model,
                config,
                lambda: self.train(model, data, config, generator),  # type: ignore[misc]
            )
        if not isinstance(result, TrainResult):
            raise TaskError(f"task {self.name!r}: train() returned {type(result).__name__}")
        return result

    def run_evaluate(self, model: nn.Module, data: Split, batch_size: int = 1000) -> EvalResult:
        """Loss and accuracy of ``model`` on ``data``: the task's own step, or fedsim's
        (a failure is a TaskError naming the task)."""
        with self.blamed("evaluation"):
            if self.evaluate is None:
                return evaluate(model, data, batch_size=batch_size, loss=self.loss)
            result = self.evaluate(model, data, batch_size)
        if not isinstance(result, EvalResult):
            raise TaskError(f"task {self.name!r}: evaluate() returned {type(result).__name__}")
        return result


def _builtin_data_elsewhere(split: str) -> Split:
    raise ConfigError("a built-in model's data comes from --dataset, not from its model key")


@functools.cache
def _model_only(model: str) -> Task:
    """A built-in model as a worker knows it: the data is the worker's own."""
    return Task(functools.partial(build_model, model), _builtin_data_elsewhere, name=model)


def image_task(dataset: str, model: str, data_dir: str | None = None) -> Task:
    """A built-in task: ``--dataset`` (Fashion-MNIST or MNIST) with ``--model``.

    One task per data root found now (``$FEDSIM_DATA`` may change between
    calls): the splits and the digest cached for a task are those of its root.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset {dataset!r} is not one of: {', '.join(DATASETS)}")
    if model not in MODELS:
        raise ConfigError(f"--model {model!r} is not one of: {', '.join(MODELS)}")
    return _image_task(dataset, model, str(resolve_data_root(dataset, data_dir)))


@functools.lru_cache(maxsize=16)
def _image_task(dataset: str, model: str, root: str) -> Task:
    def data(split: str) -> Split:
        return load_split(dataset, train=split == "train", data_dir=root)

    def digest() -> str:
        return dataset_checksum(dataset, root)

    # Named after the data alone: a worker serving --dataset holds every built-in
    # model (all in fl.models, so one code digest) and trains whichever it is asked.
    return Task(MODELS[model], data, digest=digest, name=dataset)


# Tasks this process loaded, by reference: the only user code a request can reach.
# Reentrant: a task module may build on another task while it is imported.
# Each with the file or module it was loaded from.
_LOADED: dict[str, tuple[str, Task]] = {}
_LOADING = threading.RLock()


def load_task(reference: str) -> Task:
    """The task ``reference`` (``package.module:name`` or ``path/file.py:name``) names.

    Imported once per process; a bad reference, an import that fails, or an
    object that is no task is one ConfigError line naming the reference.
    """
    option = f"--task {reference!r}"
    where, sep, attribute = reference.strip().rpartition(":")
    if not sep or not where or not attribute.isidentifier():
        raise ConfigError(f"{option} is not package.module:name or path/file.py:name")
    # A relative file names another task from another folder: keyed by what it is.
    source = str(Path(where).resolve()) if where.endswith(".py") else where
    with _LOADING:
        loaded_from, loaded = _LOADED.get(reference, ("", None))
        if loaded is not None and loaded_from == source:
            return loaded
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
        _LOADED[reference] = (source, task)
        return task


def model_task(key: str) -> Task:
    """The task whose model a request names by ``key``; never imports anything.

    A built-in model's name, or the reference of a task this process loaded
    (:func:`load_task`); anything else is a ConfigError (a worker replies with it).
    """
    if key in MODELS:
        return _model_only(key)
    with _LOADING:
        _, task = _LOADED.get(key, ("", None))
    if task is None:
        shown = key if len(key) <= 80 else f"{key[:77]}..."  # a request's key is anyone's text
        raise ConfigError(
            f"unknown model {shown!r}: this worker has {', '.join(MODELS)} and the task it was "
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
