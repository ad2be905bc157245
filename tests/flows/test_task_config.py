"""``--task`` in the experiment's config: what it replaces, what it refuses, what it logs."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from fl.errors import ConfigError
from flows.config import ExperimentConfig
from flows.config_file import config_toml, layered_config, read_config_file
from flows.level import level_named

ROOT = Path(__file__).resolve().parents[2]
DIGITS = str(ROOT / "examples" / "digits_task.py") + ":task"


def test_a_task_replaces_dataset_and_model_in_params_and_command(tmp_path: Path) -> None:
    cfg = layered_config(None, "quick", {"task": DIGITS, "levels": "baseline,3"})
    # The profile's sample counts cut the image sets: a task takes all of its data.
    assert (cfg.train_samples, cfg.test_samples) == (None, None)
    params = cfg.mlflow_params(level_named("3"))
    assert params["task"] == DIGITS and "dataset" not in params and "model" not in params
    words = shlex.split(cfg.command())
    assert words[words.index("--task") + 1] == DIGITS and "--dataset" not in words
    assert cfg.model_key == cfg.data_key == DIGITS
    (tmp_path / "experiment.toml").write_text(config_toml(cfg))
    assert read_config_file(tmp_path / "experiment.toml")["task"] == DIGITS


def test_without_a_task_the_builtin_is_named_as_before() -> None:
    cfg = ExperimentConfig(levels="2")
    params = cfg.mlflow_params(level_named("2"))
    assert (params["dataset"], params["model"], "task" in params) == ("fashion-mnist", "cnn", False)
    assert (cfg.model_key, cfg.data_key) == ("cnn", "fashion-mnist")


def test_what_a_task_cannot_run_with_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="level encrypted-eval evaluates its own built-in model"):
        ExperimentConfig(task=DIGITS, levels="baseline,encrypted-eval", train_samples=None)
    own_step = tmp_path / "own_step.py"
    own_step.write_text(
        "import dataclasses, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'examples')!r})\n"
        "from digits_task import task as digits\n"
        "task = dataclasses.replace(digits, train=lambda m, d, c, g: None)\n"
    )
    for option, refused in (
        ({"dp": "sample"}, "--dp sample"),
        ({"strategy": "fedprox"}, "--strategy fedprox"),
    ):
        with pytest.raises(ConfigError, match=f"brings its own train step; {refused}"):
            ExperimentConfig(task=f"{own_step}:task", levels="2", train_samples=None, **option)
    with pytest.raises(ConfigError, match="sample limit 8000 exceeds the 1438 train samples"):
        from flows.preflight import preflight

        preflight(ExperimentConfig(task=DIGITS, levels="2", train_samples=8000))
