"""The scheduled benchmark deployment: ``benchmark_flow`` on a cron schedule.

``fedsim serve`` builds the deployment here and serves it from its own process
(a Prefect *runner*: it polls the server for due runs and executes each one in
a subprocess). ``prefect.yaml`` at the repository root defines the same
deployment for a process work pool instead.

The entrypoint is the module path ``flows.benchmark.benchmark_flow``, not a
file path, so a served deployment runs whatever directory ``fedsim serve`` was
started from (the package is installed).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

from fl.errors import ConfigError
from flows.config import ExperimentConfig

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

__all__ = [
    "DEFAULT_CRON",
    "DEFAULT_NAME",
    "FLOW_NAME",
    "build_deployment",
    "full_name",
    "serve_benchmark",
    "validate_cron",
    "validate_name",
]

FLOW_NAME = "fedsim-benchmark"  # the @flow name of benchmark_flow
DEFAULT_NAME = "fedsim-nightly"
DEFAULT_CRON = "0 2 * * *"


def full_name(name: str) -> str:
    """``<flow>/<deployment>``: how ``prefect deployment run`` and ``run_deployment`` name it."""
    return f"{FLOW_NAME}/{name}"


def validate_cron(cron: str) -> str:
    """``cron`` if Prefect's scheduler accepts it (5 fields, no ``H``/``R``), else ConfigError."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError:  # pydantic's ValidationError is a ValueError
        raise ConfigError(
            f'invalid --cron {cron!r}: expected 5 fields "minute hour day month weekday", '
            'e.g. "0 2 * * *"'
        ) from None
    return cron


def validate_name(name: str) -> str:
    """``name`` if it can name a deployment (non-empty, no '/'), else ConfigError."""
    if not name.strip() or "/" in name or "%" in name:
        raise ConfigError(f"invalid --name {name!r}: a non-empty name without '/' or '%'")
    return name


def build_deployment(
    cfg: ExperimentConfig, *, name: str = DEFAULT_NAME, cron: str = DEFAULT_CRON
) -> RunnerDeployment:
    """The benchmark flow as a deployment with ``cron`` and ``cfg`` as its parameters.

    A manual run (UI, ``prefect deployment run``, ``run_deployment``) may pass
    another ``config``; scheduled runs use ``cfg``.
    """
    from prefect.deployments.runner import RunnerDeployment
    from prefect.types.entrypoint import EntrypointType

    from flows.benchmark import benchmark_flow

    validate_cron(cron)
    validate_name(name)
    deployment = benchmark_flow.to_deployment(
        name=name,
        cron=cron,
        parameters={"config": cfg.to_dict()},
        description=f"Scheduled fedsim benchmark: `{cfg.command()}`",
        tags=["fedsim", f"profile:{cfg.profile}"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return cast(RunnerDeployment, deployment)  # sync call: not the coroutine variant


def serve_benchmark(
    cfg: ExperimentConfig,
    *,
    name: str = DEFAULT_NAME,
    cron: str = DEFAULT_CRON,
    limit: int = 1,
) -> None:
    """Register the deployment and execute its runs until interrupted.

    Needs a reachable Prefect server (``PREFECT_API_URL``). ``limit=1``: one
    benchmark at a time, since concurrent runs would distort each other's
    timings on the same cores. KeyboardInterrupt propagates (unlike
    ``prefect.serve``, which swallows it) so the CLI can exit 130; the runner
    pauses the schedule on shutdown. SIGTERM stops the runner gracefully.
    """
    from prefect.runner import Runner

    deployment = build_deployment(cfg, name=name, cron=cron)
    runner = Runner(name=f"fedsim-serve-{name}", limit=limit, pause_on_shutdown=True)
    runner.add_deployment(deployment)
    asyncio.run(_start(runner))


async def _start(runner: Any) -> None:
    await runner.start()
