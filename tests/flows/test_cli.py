"""The ``fedsim`` command: bad options give one clear line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedsim.cli import main
from tests.run_env import isolated_run_env


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["run", "--levels", "1,9"], "unknown level '9'"),
        (["run", "--levels", "1:secure"], "applies to levels 2-5"),
        (["run", "--mac"], "--mac authenticates secure aggregation"),
        (["run", "--aggregation", "secure", "--committee", "1"], "--committee must be >= 2"),
        (["run", "--levels", "baseline,5"], "needs --workers-file"),
        (["run", "--min-workers", "11"], "more than --workers"),
        (["run", "--workers-file", "/nonexistent.toml", "--levels", "5"], "/nonexistent.toml"),
        (["run", "--workers", "0"], "must be >= 1"),
        (["run", "--rounds", "-1"], "must be >= 1"),
        (["run", "--partition", "dirichlet:x"], "bad partition"),
        (["run", "--fraction", "1.5"], "--fraction"),
        (["run", "--lr", "abc"], "expected a number"),
        (["run", "--model", "resnet"], "--model"),
        (["run", "--dataset", "cifar"], "--dataset"),
        (["run", "--data-dir", "/nonexistent/fedsim-data"], "/nonexistent/fedsim-data"),
        (["run", "--train-samples", "5", "--workers", "10"], "fewer than --workers"),
        (["run", "--train-samples", "100000"], "100000"),
        (["run", "--test-samples", "20000"], "20000"),
        (["run", "--partition", "shards:5000"], "shard"),
        (["run", "--seed", "99999999999999999999"], "--seed"),
        (["run", "--task-runner", "ray"], "--task-runner 'ray'"),
        (["run", "--task-runner", "dask", "--levels", "2,3"], "run L2 federated without it"),
        (["run", "--task-runner", "dask", "--levels", "3:secure"], "needs --aggregation plain"),
        (["run", "--dask-address", "tcp://127.0.0.1:8786"], "needs --task-runner dask"),
        (["run", "--task-runner", "dask", "--dask-address", "localhost"], "scheduler address"),
        (["run", "--levels", "4", "--workers", "100"], "one process per worker"),
        (["run", "--round-tasks", "0"], "must be >= 1"),
        (["run", "--strategy", "scaffold"], "neither a built-in"),
        (["run", "--strategy", "fl.robust:Median", "--levels", "2:secure"], "needs every client"),
        (["run", "--strategy", "fedadam", "--aggregator", "median"], "each choose the server"),
        (["run", "--strategy", "fedadam", "--dp", "client"], "each choose the server"),
        (["fly"], "invalid choice"),
    ],
)
def test_bad_option_is_one_line_and_nonzero(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err

    # Assert
    assert code not in (0, None)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert fragment in lines[0]
    assert "Traceback" not in err


@pytest.mark.e2e
def test_missing_dataset_names_the_ways_to_get_it(tmp_path: Path) -> None:
    # Prepare: $FEDSIM_DATA empty and no other source of MNIST on this machine (offline).
    env = {
        **os.environ,
        "FEDSIM_DATA": str(tmp_path),
        "FEDSIM_CACHE": str(tmp_path / "c"),
        "FEDSIM_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }

    # Execute
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", "--dataset", "mnist"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )

    # Assert
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "--data-dir" in lines[0] and "FEDSIM_DATA" in lines[0]


@pytest.mark.e2e
def test_run_twice_with_a_seed_prints_the_same_table_and_a_report(tmp_path: Path) -> None:
    # Prepare: the real entry point, a private MLflow store, Prefect home and reports.
    env = isolated_run_env(tmp_path)
    args = ["--levels", "baseline,2", "--model", "mlp", "--workers", "2", "--rounds", "1"]
    args += ["--train-samples", "400", "--test-samples", "200", "--experiment", "cli-test"]
    args += ["--seed", "7"]

    # Execute: `fedsim run --seed 7` twice.
    procs = [
        subprocess.run(
            [sys.executable, "-m", "fedsim", "run", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        for _ in range(2)
    ]

    # Assert: a table row per level, the same accuracies both times (the
    # virtual level is bitwise reproducible), and a report that exists.
    accuracies = []
    for proc in procs:
        assert proc.returncode == 0, proc.stderr
        rows = {
            line.split("│")[1].strip(): line.split("│")
            for line in proc.stdout.splitlines()
            if "│" in line
        }
        assert set(rows) == {"L0 baseline", "L2 federated"}, proc.stdout
        assert "1.00×" in rows["L0 baseline"][4]
        assert "%" in rows["L2 federated"][2]
        accuracies.append(rows["L2 federated"][2].strip())
        report = [line for line in proc.stdout.splitlines() if line.startswith("report: ")]
        assert len(report) == 1 and Path(report[0].removeprefix("report: ").strip()).is_file()
        assert "Traceback" not in proc.stderr
        assert "telemetry" not in proc.stderr.lower()
    assert accuracies[0] == accuracies[1]


def test_summary_table_fits_80_columns_with_every_level_name() -> None:
    # Prepare: one row per level and secure variant, with wide numbers.
    from rich.console import Console

    from fedsim.display import summary_table
    from flows.level import LEVELS

    names = [lv.run_name for lv in LEVELS]
    names += [lv.with_aggregation("secure").run_name for lv in LEVELS if lv.fedavg]
    rows = [
        {
            "run_name": name,
            "level": "x",
            "final_accuracy": 0.9999,
            "train_seconds": 9999.9,
            "slowdown_vs_baseline": 99.99,
            "prefect_seconds": 99.99,
            "bytes_total": 99_999e6,
        }
        for name in names
    ]
    console = Console(width=80, record=True)

    # Execute
    console.print(summary_table({"levels": rows}))

    # Assert: nothing truncated ("…") and no line wider than 80 columns.
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"levels": "baseline,2:secure,encrypted-eval", "mac": True, "workers": 3},
        {"profile": "full", "train_samples": None, "data_dir": "/data dir", "fraction": 0.5},
        {
            "profile": "robustness",
            "aggregator": "trimmed-mean:0.2",
            "attack": "alie",
            "attackers": 2,
        },
        {"levels": "2", "dp": "client", "dp_noise": 0.7, "dp_target_epsilon": 4.0},
        {"levels": "2", "dp": "client", "dp_clip": 0.3, "dp_adaptive_quantile": 0.5},
        {"levels": "2", "dp": "sample", "dp_delta": 1e-6, "attack": "label-flip", "attackers": 1},
        {"levels": "2", "dp": "client", "dp_noise_seed": 7},
        {"levels": "baseline,3", "task_runner": "dask", "dask_workers": 3, "round_tasks": 6},
        {"levels": "3", "task_runner": "dask", "dask_address": "tcp://10.0.0.5:8786"},
        {"levels": "2", "workers": 1000, "fraction": 0.1, "client_threads": 1},
        # Values that are more than one shell word, or mean something to a shell.
        {"levels": "baseline, 2", "experiment": "my exp"},
        {"experiment": "it's $HOME; `ls`", "partition": "dirichlet:0.5"},
    ],
)
def test_logged_command_reproduces_the_config(options: dict[str, Any]) -> None:
    # Prepare
    import shlex

    from fedsim.cli import _config_from_args
    from fedsim.options import build_parser
    from flows.config import ExperimentConfig

    cfg = ExperimentConfig(**options)

    # Execute: parse the command the parent run logs, as a user would paste it.
    args = build_parser().parse_args(shlex.split(cfg.command())[1:])

    # Assert
    assert _config_from_args(args) == cfg


def test_robustness_profile_attacks_and_attack_none_means_a_clean_run() -> None:
    from fedsim.cli import _config_from_args
    from fedsim.options import build_parser

    parse = build_parser().parse_args
    attacked = _config_from_args(parse(["run", "--profile", "robustness"]))
    clean = _config_from_args(parse(["run", "--profile", "robustness", "--attack", "none"]))
    defended = _config_from_args(
        parse(["run", "--profile", "robustness", "--aggregator", "krum:2"])
    )
    assert (attacked.attack, attacked.attackers, attacked.workers) == ("sign-flip", 2, 10)
    assert (clean.attack, clean.attackers) == ("none", 0)
    assert defended.aggregator == "krum:2" and defended.attackers == 2


def test_a_half_given_client_certificate_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a workers file with the coordinator's certificate but not its key.
    listing = tmp_path / "workers.toml"
    listing.write_text(
        'token_file = "token"\nclient_cert = "coordinator.pem"\n'
        '[[worker]]\nid = "worker-0"\nurl = "wss://127.0.0.2:8765"\n'
    )

    # Execute
    code = main(["run", "--levels", "5", "--workers", "1", "--workers-file", str(listing)])

    # Assert
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code not in (0, None)
    assert len(lines) == 1 and "client_cert and client_key go together" in lines[0]


@pytest.mark.e2e
def test_mutual_tls_without_tls_is_refused_before_serving() -> None:
    # Execute: a worker asked to check client certificates on a plain ws:// socket.
    done = subprocess.run(
        [sys.executable, "-m", "fedsim", "worker", "serve", "--id", "w", "--tls-client-ca", "ca"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Assert
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0
    assert len(lines) == 1 and "--tls-client-ca needs --tls-cert" in lines[0]


def test_version_and_help_need_no_torch() -> None:
    """``fedsim --version`` names the installed version, and neither it nor
    ``--help`` imports torch, Prefect or MLflow (they print in a blink)."""
    import importlib.metadata

    code = (
        "import sys\n"
        "from fedsim.cli import main\n"
        "helps = (['--help'], ['run', '--help'], ['worker', 'serve', '--help'], ['--version'])\n"
        "for argv in helps:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = {'torch', 'prefect', 'mlflow'}\n"
        "print('IMPORTED', sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "IMPORTED []" in out
    assert f"fedsim {importlib.metadata.version('fedsim')}" in out
    assert "--levels" in out and "--min-cohort" in out  # the helps were printed
