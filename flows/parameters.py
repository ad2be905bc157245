"""The benchmark flow's parameters as a typed model, so Prefect shows them as a form.

Prefect derives a deployment's parameter schema from the flow's signature: a
``dict`` is one JSON box, a pydantic model is a form with a typed field per
option and its default. The model is made from :class:`~flows.config.ExperimentConfig`'s
own fields (names, types, defaults), so the two cannot drift; the config's
checks still run when the flow builds the config from it.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from flows.config import ExperimentConfig

__all__ = ["ExperimentParameters", "parameters_dict"]


def _fields() -> dict[str, Any]:
    hints = typing.get_type_hints(ExperimentConfig)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(ExperimentConfig):
        if field.default is not dataclasses.MISSING:
            default = Field(default=field.default)
        else:  # a mutable default (the tags dict)
            assert field.default_factory is not dataclasses.MISSING
            default = Field(default_factory=field.default_factory)
        fields[field.name] = (hints[field.name], default)
    return fields


ExperimentParameters: type[BaseModel] = create_model(
    "ExperimentParameters",
    __config__=ConfigDict(extra="forbid", title="fedsim experiment"),  # unknown keys: an error
    **_fields(),
)


def parameters_dict(config: BaseModel | dict[str, Any]) -> dict[str, Any]:
    """The flow's ``config`` parameter as a plain dict, whichever form it arrived in."""
    return config.model_dump() if isinstance(config, BaseModel) else dict(config)
