"""The benchmark flow's parameters are a typed model: Prefect's form, checked values."""

from __future__ import annotations

import dataclasses

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

from flows.benchmark import benchmark_flow
from flows.config import ExperimentConfig
from flows.parameters import ExperimentParameters, parameters_dict

JSON_TYPES = {"workers": "integer", "lr": "number", "mac": "boolean", "levels": "string"}


def test_prefect_derives_a_form_with_every_option_typed_and_its_default() -> None:
    schema = parameter_schema(benchmark_flow.fn).model_dump()
    assert schema["properties"]["config"]["$ref"] == "#/definitions/ExperimentParameters"
    form = schema["definitions"]["ExperimentParameters"]
    names = [field.name for field in dataclasses.fields(ExperimentConfig)]
    assert list(form["properties"]) == names
    for name, json_type in JSON_TYPES.items():
        assert form["properties"][name]["type"] == json_type
    defaults = ExperimentConfig()
    for name in ("levels", "workers", "lr", "strategy", "task"):
        assert form["properties"][name]["default"] == getattr(defaults, name)
    assert form["additionalProperties"] is False


def test_the_model_checks_types_and_names_and_round_trips_the_config() -> None:
    with pytest.raises(ValidationError, match="workers"):
        ExperimentParameters.model_validate({"workers": "four"})
    with pytest.raises(ValidationError, match="extra"):
        ExperimentParameters.model_validate({"wokers": 4})
    cfg = ExperimentConfig(levels="2", workers=3, train_samples=None, tags={"a": "b"})
    assert parameters_dict(ExperimentParameters.model_validate(cfg.to_dict())) == cfg.to_dict()
    assert parameters_dict({"levels": "2"}) == {"levels": "2"}
