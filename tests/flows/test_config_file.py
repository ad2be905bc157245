"""`fedsim run --config FILE`: options from TOML, layered under the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedsim.cli import _config_from_args, main
from fedsim.options import build_parser
from flows.config import ExperimentConfig
from flows.config_file import config_toml, read_config_file


def _config(argv: list[str]) -> ExperimentConfig:
    config: ExperimentConfig = _config_from_args(build_parser().parse_args(["run", *argv]))
    return config


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"profile": "full", "train_samples": None, "data_dir": "/data dir", "fraction": 0.5},
        {"levels": "baseline, 2:secure", "experiment": 'my "quoted" exp', "mac": True},
        {"levels": "2", "dp": "client", "dp_noise": 0.7, "dp_delta": 1e-6, "dp_noise_seed": 3},
        {"levels": "2", "strategy": "fedadam:eta=0.1", "min_cohort": 2, "test_samples": None},
    ],
)
def test_a_config_written_out_reads_back_the_same(options: dict[str, Any], tmp_path: Path) -> None:
    cfg = ExperimentConfig(**options)
    path = tmp_path / "experiment.toml"
    path.write_text(config_toml(cfg))
    assert _config(["--config", str(path)]) == cfg


def test_the_profile_then_the_file_then_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "experiment.toml"
    path.write_text('profile = "full"\nworkers = 3\nlevels = "2"\ntrain-samples = 900\n')
    cfg = _config(["--config", str(path), "--workers", "5"])
    assert (cfg.profile, cfg.rounds, cfg.epochs) == ("full", 10, 2)  # the full profile's
    assert (cfg.workers, cfg.levels, cfg.train_samples) == (5, "2", 900)
    assert _config(["--config", str(path), "--profile", "quick"]).rounds == 6
    assert read_config_file(path)["train_samples"] == 900  # dashes or underscores


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("worker = 3\n", "unknown option 'worker'"),
        ("workers = \n", "Invalid value (at line 1"),
        ("[workers]\nx = 3\n", "'workers' must be a single value"),
        ("workers = 0\n", "workers must be >= 1"),
        ('profile = "huge"\n', "profile 'huge' is not one of"),
    ],
)
def test_a_bad_file_is_one_line_naming_it(
    text: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["run", "--config", str(path)]) not in (0, None)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], lines


def test_a_missing_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", "/nonexistent/exp.toml"]) not in (0, None)
    assert "--config /nonexistent/exp.toml: no such file" in capsys.readouterr().err
