"""The ``fedsim`` command's options: one argparse parser for every subcommand.

Options are checked here only for their type, so a typo is one line from
argparse; what they mean together is checked by the command itself (for
``fedsim run``, ``flows.config.ExperimentConfig``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
from typing import Any, NoReturn

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _samples(text: str) -> int | None:
    return None if text == "all" else _positive_int(text)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _add_run(sub: Any) -> None:
    from flows.profiles import PROFILES

    quick, full = PROFILES["quick"], PROFILES["full"]

    def preset(key: str) -> str:
        return f"(default: {quick[key]} quick, {full[key]} full)"

    run = sub.add_parser(
        "run",
        argument_default=argparse.SUPPRESS,
        help="run the benchmark: baseline and the chosen levels",
        description="Run one federated-learning experiment at the chosen levels of realism, "
        "orchestrated by Prefect and tracked in MLflow; prints accuracy and slowdown per level.",
    )
    add = run.add_argument
    add(
        "--levels",
        help=f"comma-separated levels, words or numbers, e.g. baseline,1,2,2:secure,"
        f"encrypted-eval {preset('levels')}",
    )
    add("--dataset", help="fashion-mnist (default) or mnist")
    add("--model", help="cnn (default), mlp or mpc-cnn")
    add(
        "--task",
        help="your own model, data and loss instead of --dataset/--model: "
        "package.module:name or path/file.py:name, a fl.tasks.Task (docs/tasks.md)",
    )
    add("--workers", type=_positive_int, help=f"number of workers / clients {preset('workers')}")
    add("--rounds", type=_positive_int, help=f"federated rounds {preset('rounds')}")
    add("--epochs", type=_positive_int, help=f"local epochs per round {preset('epochs')}")
    add("--batch-size", type=_positive_int, help=f"minibatch size B {preset('batch_size')}")
    add("--lr", type=_float, help=f"SGD learning rate {preset('lr')}")
    add("--fraction", type=_float, help="client fraction C per round, in (0, 1] (default 1)")
    add("--partition", help="iid (default), dirichlet:ALPHA or shards:K")
    add(
        "--aggregation",
        help="plain (default), secure (secret sharing) or he (CKKS homomorphic encryption) "
        "for levels 2-5 (one level: write 2:secure or 2:he in --levels)",
    )
    add(
        "--committee",
        type=_positive_int,
        help="secure aggregation: workers each update is shared among (default 3)",
    )
    add(
        "--min-cohort",
        type=_positive_int,
        help="secure and he aggregation: the fewest clients a revealed sum may hold "
        "(default 3, or every client of a smaller round)",
    )
    add(
        "--mac",
        action="store_true",
        help="secure aggregation with SPDZ MACs: a tampered share aborts the round",
    )
    _add_defence(add)
    add("--seed", type=_non_negative_int, help="seed of everything random (default 0)")
    add(
        "--config",
        metavar="FILE",
        help="the experiment's options in a TOML file (the profile's defaults, then "
        "the file, then the options given here)",
    )
    add("--profile", choices=tuple(PROFILES), help="defaults preset (default: quick)")
    add(
        "--train-samples",
        type=_samples,
        help=f"first N training samples, or 'all' {preset('train_samples')}",
    )
    add(
        "--test-samples",
        type=_samples,
        help=f"first N test samples, or 'all' {preset('test_samples')}",
    )
    add("--experiment", help="MLflow experiment name (default fedsim)")
    add("--data-dir", help="folder holding the dataset's idx files")
    add("--workers-file", help="level 5: TOML file listing the workers (id, url, ca, token_file)")
    add("--min-workers", type=_positive_int, help="fewest workers a round may complete with")
    add(
        "--timeout",
        dest="request_timeout",
        metavar="SECONDS",
        type=_float,
        help="seconds one worker request may take before the worker is dropped (default 600)",
    )
    _add_engine(add)


def _add_engine(add: Any) -> None:
    """Where and in how many tasks a round's clients train (flows.engine)."""
    add(
        "--task-runner",
        help="local (default: clients train in this process) or dask (level 3's clients "
        "train on a Dask cluster through prefect-dask)",
    )
    add(
        "--dask-address",
        metavar="tcp://HOST:PORT",
        help="scheduler of an existing Dask cluster (default: a LocalCluster on 127.0.0.1)",
    )
    add(
        "--dask-workers",
        type=_positive_int,
        help="processes of the LocalCluster started when no --dask-address is given (default 2)",
    )
    add(
        "--round-tasks",
        type=_positive_int,
        help="Prefect tasks a round's sampled clients are batched into (default 2)",
    )
    add(
        "--client-threads",
        type=_positive_int,
        help="torch threads for each client's local training (default: torch's own; on a "
        "LocalCluster, cores / --dask-workers)",
    )


def _add_defence(add: Any) -> None:
    """Robust aggregation, simulated attackers and differential privacy (levels 2-5)."""
    add(
        "--aggregator",
        help="fedavg (default), median, trimmed-mean:BETA, krum:F or multi-krum:F:M",
    )
    add(
        "--strategy",
        help="server strategy: fedavg (default), fedadam[:eta=0.01,...], fedprox[:mu=0.01], "
        "median, trimmed-mean:beta=B, krum:f=F, multi-krum:f=F,m=M, or your own "
        "package.module:Class[:key=value,...], a subclass of fl.aggregation.Strategy",
    )
    add("--attack", help="none (default), label-flip, sign-flip, noise, scale or alie")
    add("--attackers", type=_non_negative_int, help="how many clients attack (default 0)")
    add("--dp", help="none (default), client (DP-FedAvg) or sample (DP-SGD with Opacus)")
    add("--dp-noise", type=_float, help="DP noise multiplier z (default 1.0)")
    add("--dp-clip", type=_float, help="DP clip norm S: of updates or per sample (default 1.0)")
    add("--dp-delta", type=_float, help="DP δ (default 1e-5)")
    add(
        "--dp-target-epsilon",
        type=_float,
        help="privacy budget: training stops before a round would exceed this ε",
    )
    add(
        "--dp-adaptive-clip",
        dest="dp_adaptive_quantile",
        metavar="QUANTILE",
        type=_float,
        help="client DP: clip to this quantile of update norms (Andrew et al. 2021)",
    )
    add(
        "--dp-noise-seed",
        metavar="N",
        type=_non_negative_int,
        help="simulation only: draw DP noise and sampling from seed N instead of a CSPRNG, so "
        "runs repeat exactly; the run is NOT private (anyone with its params can subtract "
        "the noise) and is tagged fedsim.dp.private=false",
    )


def _add_worker(sub: Any) -> None:
    from flows.profiles import PROFILES
    from workers.cohort import SERVED_MIN_COHORT

    quick = PROFILES["quick"]
    worker = sub.add_parser("worker", help="run a websocket worker")
    worker_sub = worker.add_subparsers(dest="worker_command", required=True, parser_class=_Parser)
    serve = worker_sub.add_parser(
        "serve",
        help="serve one worker over websockets until SIGINT/SIGTERM",
        description="Serve one fedsim worker over websockets. With --partition I/N it loads "
        "partition I of N of the training set itself (the coordinator never sees the data). "
        "Prints one JSON line {'event': 'ready', 'port': P, ...} on stdout once listening.",
    )
    add = serve.add_argument
    add("--id", required=True, help="worker id (the coordinator checks it)")
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--port", type=_non_negative_int, default=0, help="port (default 0: any free port)")
    add("--data-dir", help="folder holding the dataset's idx files")
    add("--dataset", default="fashion-mnist", help="fashion-mnist (default) or mnist")
    add("--task", help="the run's --task: this worker trains its model on its data")
    add("--partition", help="I/N: load partition I (0-based) of N of the training set")
    add("--partitioner", default="iid", help="iid (default), dirichlet:ALPHA or shards:K")
    add("--seed", type=_non_negative_int, default=0, help="partition seed (as the coordinator's)")
    add("--train-samples", type=_samples, default=None, help="first N training samples")
    add("--token-file", help="shared secret for coordinator authentication")
    add(
        "--peer-secret-file",
        help="a secret the federation's workers share and the coordinator does not: it "
        "vouches for session keys, so the coordinator cannot substitute its own",
    )
    add("--tls-cert", help="TLS certificate (PEM); serves wss:// with --tls-key")
    add("--tls-key", help="TLS private key (PEM)")
    add(
        "--tls-client-ca",
        help="mutual TLS: accept only peers with a client certificate from this CA (PEM), "
        "the coordinator's; its secret is still checked on top",
    )
    add("--threads", type=_positive_int, help="torch threads for this worker")
    add("--max-message-mb", type=_positive_int, default=256, help="largest frame accepted")
    add(
        "--min-cohort",
        type=_positive_int,
        default=SERVED_MIN_COHORT,
        help="the fewest clients a secure sum this worker helps open may hold, whatever the "
        f"coordinator asks (default {SERVED_MIN_COHORT}; at least 2)",
    )

    up = worker_sub.add_parser(
        "up",
        help="start level-5 worker daemons on 127.0.0.2, 127.0.0.3, ... (TLS + token)",
        description="Start one `fedsim worker serve` daemon per worker on its own loopback "
        "address, with a CA and certificate made for the purpose, and write DIR/workers.toml "
        "for `fedsim run --levels 5 --workers-file DIR/workers.toml`.",
    )
    add = up.add_argument
    add("--dir", default=".fedsim/level5", help="where keys, logs and workers.toml go")
    add("--workers", type=_positive_int, default=quick["workers"], help="as `fedsim run`")
    add("--dataset", default="fashion-mnist")
    add("--task", help="as `fedsim run --task`")
    add("--data-dir")
    add("--partition", default="iid", help="as `fedsim run --partition`")
    add("--seed", type=_non_negative_int, default=0)
    add(
        "--train-samples",
        type=_samples,
        default=argparse.SUPPRESS,
        help=f"as `fedsim run` (default {quick['train_samples']}; with --task, all)",
    )
    key = worker_sub.add_parser(
        "key",
        help="write one worker's key, derived from the workers file's master secret",
        description="Derive worker ID's key from the master secret (the workers file's "
        "token_file) and write it to OUT (mode 600), for `fedsim worker serve --token-file OUT` "
        "on that worker's host. A worker holds only its own key, so it cannot pose as the "
        "coordinator to the others.",
    )
    key.add_argument("--token-file", required=True, help="the master secret")
    key.add_argument("--id", required=True, help="the worker's id, as in the workers file")
    key.add_argument("--out", required=True, help="where to write the worker's key")
    down = worker_sub.add_parser("down", help="stop the daemons started by `fedsim worker up`")
    down.add_argument("--dir", default=".fedsim/level5")


def _version() -> str:
    try:
        return importlib.metadata.version("fedsim")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The command line; building it imports no torch (``--help`` stays fast)."""
    parser = _Parser(prog="fedsim", description="Privacy-preserving federated-learning lab.")
    parser.add_argument("--version", action="version", version=f"fedsim {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_worker(sub)
    _add_report(sub)
    _add_serve(sub)
    _add_new(sub)
    return parser


def _add_new(sub: Any) -> None:
    new = sub.add_parser(
        "new",
        help="write a small project: a task, a config file and a test",
        description="Write NAME/ with task.py (a model and data: scikit-learn's digits, no "
        "download), experiment.toml and test_task.py; `fedsim run --config "
        "experiment.toml` in NAME/ runs it as written.",
    )
    new.add_argument("name", metavar="NAME", help="the project's folder and MLflow experiment")
    new.add_argument("--dir", default=".", help="where to write NAME/ (default: here)")


def _add_report(sub: Any) -> None:
    report = sub.add_parser(
        "report",
        help="write the report of a benchmark run from MLflow",
        description="Read a benchmark's runs from MLflow and write "
        "DIR/<experiment>/<run>/report.md and a self-contained report.html.",
    )
    report.add_argument("--experiment", default="fedsim", help="MLflow experiment (default fedsim)")
    report.add_argument("--run", dest="run_id", help="parent run id (default: the latest)")
    report.add_argument("--out", default="reports", help="output folder (default reports/)")


def _add_serve(sub: Any) -> None:
    from flows.profiles import PROFILES

    serve = sub.add_parser(
        "serve",
        help="serve the benchmark flow as a scheduled Prefect deployment",
        description="Serve the fedsim benchmark flow on a Prefect server with a cron "
        "schedule, until interrupted. Needs a reachable Prefect server (PREFECT_API_URL).",
    )
    serve.add_argument("--cron", default="0 2 * * *", help='cron schedule (default "0 2 * * *")')
    serve.add_argument("--name", default="fedsim-nightly", help="deployment name")
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="each run's options in a TOML file, as `fedsim run --config`",
    )
    serve.add_argument(
        "--profile", choices=tuple(PROFILES), help="defaults preset (default: quick)"
    )
    serve.add_argument("--levels", help="levels of each scheduled run (default: the profile's)")
    serve.add_argument("--experiment", help="MLflow experiment (default: fedsim)")
