"""`fedsim run --config experiment.toml`: an experiment's options in a file.

The file is a flat TOML table of ``fedsim run``'s options, named as on the
command line or with underscores (``train-samples = 8000`` or
``train_samples = 8000``; ``"all"`` for every sample). Layering: the
profile's defaults (``profile = "full"`` in the file, or ``--profile``), then
the file, then the options given on the command line. :func:`config_toml`
writes a config back in the same form, every option spelled out — the run
logs it to MLflow as ``experiment.toml``, and ``fedsim run --config`` on that
file runs the same experiment.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fl.errors import ConfigError

__all__ = ["config_toml", "layered_config", "read_config_file"]

_SAMPLES = ("train_samples", "test_samples")
_NOT_OPTIONS = ("tags",)  # ExperimentConfig fields the file does not set


def _fields() -> dict[str, dataclasses.Field[Any]]:
    from flows.config import ExperimentConfig

    return {f.name: f for f in dataclasses.fields(ExperimentConfig) if f.name not in _NOT_OPTIONS}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The options in ``path``; one ConfigError line naming the file for anything wrong."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--config {path}: {exc}") from None
    known = _fields()
    options: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"--config {path}: unknown option {key!r}")
        if isinstance(value, dict | list):
            raise ConfigError(f"--config {path}: {key!r} must be a single value, not a table")
        if name in _SAMPLES and value == "all":
            value = None
        options[name] = value
    return options


def layered_config(
    config_file: str | Path | None, profile: str | None, given: Mapping[str, Any]
) -> Any:
    """The ExperimentConfig of ``fedsim run`` and ``fedsim serve``: the profile's
    defaults (``profile``, else the file's, else quick), then the file, then the
    options ``given`` on the command line. ``attack = "none"`` means no attackers,
    whatever the profile says. The profiles' sample counts are cuts of the image
    data sets: with a ``task`` the default is all of the task's data."""
    from flows.config import PROFILES, ExperimentConfig

    from_file = read_config_file(config_file) if config_file else {}
    chosen = profile or from_file.get("profile") or "quick"
    if chosen not in PROFILES:
        raise ConfigError(f"profile {chosen!r} is not one of: {', '.join(PROFILES)}")
    layered = {**from_file, **given}
    if layered.get("attack") == "none":
        layered.setdefault("attackers", 0)
    defaults = dict(PROFILES[chosen])
    if layered.get("task"):
        defaults |= {"train_samples": None, "test_samples": None}
    return ExperimentConfig(**{**defaults, **layered, "profile": chosen})


def config_toml(config: Any) -> str:
    """``config`` (an ExperimentConfig) as the TOML :func:`read_config_file` reads:
    every option, unset ones as comments (TOML has no null)."""
    lines = ["# fedsim run --config: every option of this experiment", ""]
    for name in _fields():
        value = getattr(config, name)
        if value is None and name in _SAMPLES:
            value = "all"
        if value is None:
            lines.append(f"# {name} = (not set)")
        elif isinstance(value, bool):
            lines.append(f"{name} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{name} = {value!r}")
        else:  # a JSON string is a TOML basic string
            lines.append(f"{name} = {json.dumps(str(value), ensure_ascii=False)}")
    return "\n".join(lines) + "\n"
