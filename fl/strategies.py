"""``--strategy``: a built-in server strategy by name, or the user's own class by import path.

A spec is ``NAME[:key=value,...]`` for a built-in (``fedavg``, ``fedadam``,
``fedprox``, and the robust ``median``, ``trimmed-mean:beta=B``, ``krum:f=F``,
``multi-krum:f=F,m=M``),
``package.module:Class[:key=value,...]`` for any subclass of
:class:`fl.aggregation.Strategy` importable on the coordinator — from the
working directory too, which a console script does not put on ``sys.path`` —
or ``path/to/file.py:Class[:...]``. Strategies run on the coordinator only;
workers never import them. Values are numbers where they parse
as numbers, else strings. Every mistake is one :class:`ConfigError` line
naming the spec, and a strategy whose round result is unusable is named too
(:func:`check_aggregate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch

from fl.aggregation import FedAvg, Strategy
from fl.errors import ConfigError, FedsimError
from fl.fedopt import FedAdam
from fl.fedprox import FedProx
from fl.imports import import_module_at
from fl.robust import Krum, Median, MultiKrum, TrimmedMean

__all__ = [
    "BUILTIN_STRATEGIES",
    "StrategyError",
    "averages",
    "check_aggregate",
    "load_strategy",
    "train_options",
]

BUILTIN_STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": FedAvg,
    "fedadam": FedAdam,
    "fedprox": FedProx,
    # The robust aggregators (fl.robust), also spelled --aggregator median, ...:
    # subclasses of the same base, with their options by name (beta, f, m).
    "median": Median,
    "trimmed-mean": TrimmedMean,
    "krum": Krum,
    "multi-krum": MultiKrum,
}


class StrategyError(FedsimError):
    """A strategy failed in a round, or returned a state the model cannot take."""


def _value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _options(spec: str, text: str) -> dict[str, int | float | str]:
    options: dict[str, int | float | str] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"--strategy {spec!r}: options are key=value, got {item!r}")
        options[key.strip()] = _value(value.strip())
    return options


def load_strategy(spec: str) -> Strategy:
    """The strategy ``spec`` names, made with its options (see the module docstring)."""
    head, _, rest = spec.strip().partition(":")
    if head in BUILTIN_STRATEGIES:
        make, label, options = BUILTIN_STRATEGIES[head], head, _options(spec, rest)
    else:
        class_name, _, option_text = rest.partition(":")
        if not head or not class_name:
            names = ", ".join(BUILTIN_STRATEGIES)
            raise ConfigError(
                f"--strategy {spec!r} is neither a built-in ({names}) nor package.module:Class"
            )
        module = import_module_at(f"--strategy {spec!r}", head)
        found = getattr(module, class_name, None)
        if not (isinstance(found, type) and issubclass(found, Strategy)):
            raise ConfigError(
                f"--strategy {spec!r}: {head}.{class_name} is not a subclass of "
                "fl.aggregation.Strategy"
            )
        make, label, options = found, f"{head}:{class_name}", _options(spec, option_text)
    try:
        strategy = make(**options)
    except FedsimError as exc:
        raise ConfigError(f"--strategy {spec!r}: {exc}") from None
    except Exception as exc:  # the user's constructor: any failure is one line
        raise ConfigError(f"--strategy {spec!r}: {label}({options}) failed: {exc}") from None
    return strategy


def train_options(strategy: Strategy, spec: str) -> dict[str, float]:
    """The clients' ``TrainConfig`` fields ``strategy`` sets, checked to be fields that
    exist and numbers (a ConfigError naming ``spec`` otherwise)."""
    from fl.training import TrainConfig  # fl.training imports nothing of this module

    options = dict(strategy.train_options)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"--strategy {spec!r} sets training options that do not exist: {unknown}")
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"--strategy {spec!r} sets {key} to {value!r}, not a number")
    return options


def averages(strategy: Strategy) -> bool:
    """Whether ``strategy`` finishes a mean (``finish_mean``): only such a strategy runs
    under secure or homomorphic aggregation, where the coordinator sees only the sum."""
    return type(strategy).finish_mean is not Strategy.finish_mean


def check_aggregate(
    strategy: Strategy, previous: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> None:
    """A :class:`StrategyError` naming ``strategy`` if the state it returned for the
    next round lacks a key, has a wrong shape, or holds NaN or infinity."""
    name = getattr(strategy, "name", type(strategy).__name__)
    if not isinstance(state, Mapping) or set(state) != set(previous):
        missing = sorted(set(previous) - set(state)) if isinstance(state, Mapping) else []
        raise StrategyError(f"strategy {name!r} returned a state without {missing or 'a mapping'}")
    for key, value in state.items():
        before = previous[key]
        if not isinstance(value, torch.Tensor) or value.shape != before.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise StrategyError(
                f"strategy {name!r} returned {key!r} of shape {shape}, not {tuple(before.shape)}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise StrategyError(f"strategy {name!r} diverged: {key!r} holds NaN or infinity")
