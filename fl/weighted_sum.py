"""A running weighted sum of model states in float64: FedAvg's arithmetic, one update at a time."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from fl.errors import ConfigError

__all__ = ["WeightedSum", "weighted_average"]


# Float64 elements folded per step (256 KiB): the slice of the sum being added
# to stays in a core's L2 cache while it is read and written.
_FOLD_SLICE = 1 << 15


def _check_weights(weights: Sequence[float]) -> float:
    """Validate aggregation weights and return their sum."""
    bad = [w for w in weights if not (math.isfinite(w) and w >= 0)]
    if bad:
        raise ConfigError(f"aggregation weights must be finite and >= 0, got {list(weights)}")
    total = float(sum(weights))
    if total <= 0:
        raise ConfigError(f"aggregation weights must have a positive sum, got {list(weights)}")
    return total


def _check_same_layout(states: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """Every state must have the first state's keys, shapes and dtypes."""
    first = states[0]
    for i, state in enumerate(states[1:], start=1):
        if set(state) != set(first):
            diff = sorted(set(state) ^ set(first))
            raise ConfigError(f"state {i} has different keys than state 0: {diff}")
        for key, ref in first.items():
            t = state[key]
            if t.shape != ref.shape or t.dtype != ref.dtype:
                raise ConfigError(
                    f"state {i} {key!r} is {tuple(t.shape)} {t.dtype}, "
                    f"state 0 has {tuple(ref.shape)} {ref.dtype}"
                )


class WeightedSum:
    """A running Σᵢ wᵢ·stateᵢ and Σᵢ wᵢ: FedAvg without holding the states.

    A round with thousands of sampled clients cannot keep every client model
    alive until the end of the round; folding each update into one float64
    accumulator as it arrives keeps memory at one model whatever the count.
    Sums computed apart (one per batch of clients, possibly on other machines)
    combine with :meth:`merge`. Folding the same states in the same order gives
    the same bits as :func:`weighted_average`, which is built on this class.

    Accumulates in float64 (averaging many float32 models in float32 loses low
    bits and makes the result depend on client order) and casts back to each
    tensor's dtype. Non-floating tensors (counters such as BatchNorm's
    ``num_batches_tracked``) cannot be averaged: they are kept from the first
    state and every later state must agree (else ConfigError).
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # float64 Σ w·x, or the kept counter
        self.total = 0.0
        self.count = 0
        self._scratch: torch.Tensor | None = None  # see _fold

    def add(self, state: Mapping[str, torch.Tensor], weight: float) -> None:
        """Fold ``weight · state`` into the sum."""
        self.add_many([(state, weight)])

    def add_many(self, items: Sequence[tuple[Mapping[str, torch.Tensor], float]]) -> None:
        """Fold several ``(state, weight)`` at once: the same bits as adding them in
        order (each element's additions happen in that order), but each slice of
        the float64 sum is read and written once for all of them, not once each.
        """
        if not items:
            return
        for _, weight in items:
            if not (math.isfinite(weight) and weight >= 0):
                raise ConfigError(f"aggregation weights must be finite and >= 0, got {weight}")
        states = [state for state, _ in items]
        weights = [float(weight) for _, weight in items]
        self._check_layout(states[0])
        _check_same_layout(states)
        for key, first in states[0].items():  # every check before any sum changes
            kept = self.sums.get(key, first)
            if not first.is_floating_point() and not all(torch.equal(kept, s[key]) for s in states):
                raise ConfigError(f"non-floating tensor {key!r} differs between states")
        for key, first in states[0].items():
            if not first.is_floating_point():
                if key not in self.sums:
                    self.sums[key] = first.clone()
                continue
            if self.count == 0:
                self.sums[key] = torch.zeros(first.shape, dtype=torch.float64)
            self._fold(self.sums[key], [state[key] for state in states], weights)
        for weight in weights:
            self.total += weight
        self.count += len(items)

    def _fold(self, acc: torch.Tensor, tensors: list[torch.Tensor], weights: list[float]) -> None:
        """``acc += Σ wᵢ · tensorᵢ`` in float64, in order, one cache-sized slice at a time.

        Torch's mixed-dtype ``add_`` converts element by element and does not
        vectorise, so it is slower than a float64 add of a float64 copy
        (docs/scale.md, "What a client costs"). Converting a slice into a reused
        float64 scratch buffer (exact: float32 ⊂ float64) and adding it computes
        the same values, so the bits do not change.
        """
        flat_acc = acc.view(-1)
        flats = [tensor.reshape(-1) for tensor in tensors]
        size = flat_acc.numel()
        if self._scratch is None:
            self._scratch = torch.empty(_FOLD_SLICE, dtype=torch.float64)
        for start in range(0, size, _FOLD_SLICE):
            stop = min(start + _FOLD_SLICE, size)
            part, target = self._scratch[: stop - start], flat_acc[start:stop]
            for flat, weight in zip(flats, weights, strict=True):
                part.copy_(flat[start:stop])
                target.add_(part, alpha=weight)

    def merge(self, other: WeightedSum) -> None:
        """Add a sum computed apart (another batch of clients) into this one."""
        if other.count == 0:
            return
        if self.count == 0:
            self.sums = {k: t.clone() for k, t in other.sums.items()}
        else:
            self._check_layout(other.sums, floating_as=torch.float64)
            for key, tensor in other.sums.items():
                if tensor.is_floating_point():
                    self.sums[key].add_(tensor)
                elif not torch.equal(self.sums[key], tensor):
                    raise ConfigError(f"non-floating tensor {key!r} differs between states")
        self.total += other.total
        self.count += other.count

    def average(self, dtypes: Mapping[str, torch.dtype]) -> dict[str, torch.Tensor]:
        """Σ w·x / Σ w, each tensor cast to ``dtypes[key]`` (the model's own dtypes)."""
        if self.count == 0:
            raise ConfigError("no state was added to the weighted sum")
        if self.total <= 0:
            raise ConfigError(f"aggregation weights must have a positive sum, got {self.total}")
        return {
            key: (t.div(self.total).to(dtypes[key]) if t.is_floating_point() else t.clone())
            for key, t in self.sums.items()
        }

    def _check_layout(
        self, state: Mapping[str, torch.Tensor], floating_as: torch.dtype | None = None
    ) -> None:
        """Every state must have the first state's keys and shapes (and dtype kinds)."""
        if self.count == 0:
            return
        if set(state) != set(self.sums):
            diff = sorted(set(state) ^ set(self.sums))
            raise ConfigError(f"state {self.count} has different keys than state 0: {diff}")
        for key, ref in self.sums.items():
            t = state[key]
            if t.shape != ref.shape or t.is_floating_point() != ref.is_floating_point():
                raise ConfigError(
                    f"state {self.count} {key!r} is {tuple(t.shape)} {t.dtype}, "
                    f"state 0 has {tuple(ref.shape)}"
                )
            if floating_as is not None and t.is_floating_point() and t.dtype != floating_as:
                raise ConfigError(f"partial sum {key!r} is {t.dtype}, expected {floating_as}")


def weighted_average(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Σᵢ wᵢ·stateᵢ / Σᵢ wᵢ, key by key, in float64 (see :class:`WeightedSum`).

    Every state must have the first state's keys, shapes and dtypes (else ConfigError).
    """
    if len(states) == 0 or len(states) != len(weights):
        raise ConfigError(
            f"need >= 1 state and one weight per state, got {len(states)} states "
            f"and {len(weights)} weights"
        )
    _check_weights(weights)
    _check_same_layout(states)
    acc = WeightedSum()
    for state, weight in zip(states, weights, strict=True):
        acc.add(state, weight)
    return acc.average({key: t.dtype for key, t in states[0].items()})
