"""The training requests of a worker: Train, Fit and Evaluate on a pooled module.

A mixin of :class:`~workers.core.WorkerCore`, which holds the store these
handlers read and write; kept apart because training is a concern of its own
(pooled modules, sealed contributions, the worker's private data).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from fl.data import Split
from fl.errors import FedsimError
from fl.tasks import model_task
from fl.training import TrainConfig
from workers.codec import Value
from workers.contributions import Contribution, Contributions, training_digest
from workers.failures import RequestFailure
from workers.messages import EvalReply, Evaluate, Fit, FitReply, Train, TrainReply
from workers.model_pool import ModelPool, trained_state

__all__ = ["TrainingRequests"]


class TrainingRequests:
    """Train, Fit and Evaluate over the worker's store (see WorkerCore)."""

    _objects: dict[str, Value]
    _contributions: Contributions
    _models: ModelPool
    _private: frozenset[str]
    _held: set[str]

    def _lookup(self, obj_id: str) -> Value:
        raise NotImplementedError

    def _tensor(self, obj_id: str, what: str) -> torch.Tensor:
        raise NotImplementedError

    def _new_id(self, obj_id: str) -> str:
        raise NotImplementedError

    def _refuse_held(self, obj_id: str) -> None:
        """A value opened for this worker alone is for party steps only: the
        coordinator may free it, never read, train or evaluate on it."""
        if obj_id in self._held:
            raise RequestFailure(
                "bad_request", f"{obj_id!r} was revealed to this worker alone: party steps only"
            )

    @contextmanager
    def _model(self, name: str, state_id: str, *, take: bool = False) -> Iterator[nn.Module]:
        """A pooled module for ``name`` holding the stored state ``state_id``: a copy,
        or with ``take`` the stored tensors themselves, the id freed (``Fit``).

        A sealed state is refused: training or evaluating from it would give the
        coordinator a readable copy, or a model to query.
        """
        if state_id in self._contributions:
            raise RequestFailure(
                "bad_request", f"{state_id!r} is sealed for secure aggregation: party steps only"
            )
        self._refuse_held(state_id)
        state = self._lookup(state_id)
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise RequestFailure("bad_request", f"{state_id!r} is not a state dict of tensors")
        with ExitStack() as stack:
            try:
                model = stack.enter_context(self._models.lease(name, state, take=take))
            except FedsimError as exc:
                raise RequestFailure("bad_request", str(exc)) from None
            if take:
                # Stored objects never share memory (each PutObject's tensors view
                # its own request frame, Train results are a module's own): the
                # module holds the only copy.
                del self._objects[state_id]
            yield model

    def _split(self, x_id: str, y_id: str) -> Split:
        x, y = self._tensor(x_id, "data"), self._tensor(y_id, "labels")
        if x.ndim == 0 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise RequestFailure(
                "bad_request", f"data {tuple(x.shape)} and labels {tuple(y.shape)}"
            )
        return Split(x, y)

    @staticmethod
    def _training_setup(msg: Train | Fit) -> tuple[TrainConfig, torch.Generator]:
        """The request's checked train config, and its seeded shuffling generator."""
        if not 0 <= msg.seed < 2**64:  # torch would silently wrap a negative seed
            raise RequestFailure("bad_request", f"train seed must be in [0, 2**64), got {msg.seed}")
        try:
            return TrainConfig.from_dict(msg.config), torch.Generator().manual_seed(msg.seed)
        except (FedsimError, RuntimeError) as exc:
            raise RequestFailure("bad_request", f"{msg.TAG}: {exc}") from None

    def _train(self, msg: Train) -> TrainReply:
        self._new_id(msg.result_id)
        config, generator = self._training_setup(msg)
        digest = self._contribution_digest(msg) if msg.sealed else b""
        with self._model(msg.model, msg.state_id) as model:
            data = self._split(msg.x_id, msg.y_id)
            try:
                result = model_task(msg.model).run_train(model, data, config, generator)
            except Exception as exc:
                raise RequestFailure(
                    "train_failed", f"train: {type(exc).__name__}: {exc}"
                ) from None
            self._objects[msg.result_id] = trained_state(model)  # the pool never writes it again
        if msg.sealed:
            self._contributions.add(msg.result_id, Contribution(result.num_samples, digest))
        return TrainReply(
            msg.result_id, result.num_samples, result.steps, result.mean_loss, result.seconds
        )

    def _contribution_digest(self, msg: Train) -> bytes:
        """What a sealed result is trained from, checked to be this worker's own data.

        A worker that holds data of its own contributes only what it trained on
        it: a sealed result from data the coordinator sent would be one the
        coordinator can predict, and so subtract from a sum.
        """
        if self._private and not {msg.x_id, msg.y_id} <= self._private:
            raise RequestFailure(
                "bad_request", "sealed training uses this worker's own data, not data it was sent"
            )
        initial = self._lookup(msg.state_id)
        if not isinstance(initial, dict) or not all(
            isinstance(v, torch.Tensor) for v in initial.values()
        ):
            raise RequestFailure("bad_request", f"{msg.state_id!r} is not a state dict of tensors")
        return training_digest(msg.model, msg.config, initial)

    def _fit(self, msg: Fit) -> FitReply:
        """Train from a state the worker takes over, and answer with the trained state.

        Everything is checked before the state is taken, so a refused Fit leaves
        the store as it was. Once taken, the tensors are trained in place: a Fit
        that then fails has consumed its state (the error says so).
        """
        config, generator = self._training_setup(msg)
        data = self._split(msg.x_id, msg.y_id)
        with self._model(msg.model, msg.state_id, take=True) as model:
            try:
                result = model_task(msg.model).run_train(model, data, config, generator)
            except Exception as exc:
                raise RequestFailure(
                    "train_failed", f"fit: {type(exc).__name__}: {exc} ({msg.state_id!r} consumed)"
                ) from None
            trained = trained_state(model)
        return FitReply(trained, result.num_samples, result.steps, result.mean_loss, result.seconds)

    def _evaluate(self, msg: Evaluate) -> EvalReply:
        if msg.batch_size < 1:
            raise RequestFailure("bad_request", f"batch size must be >= 1, got {msg.batch_size}")
        with self._model(msg.model, msg.state_id) as model:
            data = self._split(msg.x_id, msg.y_id)
            try:
                result = model_task(msg.model).run_evaluate(model, data, msg.batch_size)
            except Exception as exc:
                raise RequestFailure(
                    "train_failed", f"evaluate: {type(exc).__name__}: {exc}"
                ) from None
        return EvalReply(result.loss, result.accuracy, result.num_samples)
