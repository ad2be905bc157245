"""``fedsim serve``: serve the benchmark flow as a scheduled Prefect deployment.

Everything a user can get wrong is checked before serving, each as one line:
the options (profile, levels, cron), the data, and that a Prefect server
answers at ``PREFECT_API_URL``. Schedules need a real server; without one,
Prefect would start a temporary in-process server whose schedule dies with it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fl.errors import ConfigError

__all__ = ["START_HINT", "check_prefect_api", "pin_tracking_uri", "serve_deployment"]

START_HINT = (
    "start one with `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api"
)


def check_prefect_api(url: str | None, timeout: float = 3.0) -> str:
    """``url`` if ``GET <url>/health`` answers 200, else ConfigError with how to start a server."""
    import httpx

    if not url:
        raise ConfigError(f"no Prefect server (PREFECT_API_URL is not set): {START_HINT}")
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout)
        healthy = response.status_code == 200
    except (httpx.HTTPError, ValueError):  # ValueError: an unusable URL
        healthy = False
    if not healthy:
        raise ConfigError(f"no Prefect server at {url}: {START_HINT}")
    return url


def pin_tracking_uri() -> str:
    """Make the MLflow store absolute in ``$MLFLOW_TRACKING_URI`` for the flow-run subprocesses.

    Scheduled runs execute in subprocesses of ``fedsim serve``: pinning the
    store here keeps them logging where the user started the server, and
    lets us print where that is.
    """
    from flows.tracking import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def serve_deployment(args: argparse.Namespace) -> int:
    """Validate, check the server, then serve until interrupted (Ctrl-C → 130 in the CLI)."""
    from prefect.settings import get_current_settings

    from flows.config_file import layered_config
    from flows.deployment import full_name, serve_benchmark, validate_cron, validate_name
    from flows.preflight import preflight

    given = {k: v for k in ("levels", "experiment") if (v := getattr(args, k))}
    cfg = layered_config(args.config, args.profile, given)  # as `fedsim run --config`
    validate_cron(args.cron)
    validate_name(args.name)
    settings = get_current_settings()
    check_prefect_api(settings.api.url)
    preflight(cfg)  # missing data would otherwise fail the first scheduled run, hours later

    uri = pin_tracking_uri()
    ui = settings.ui_url
    print(
        f"fedsim: serving {full_name(args.name)!r} on cron {args.cron!r} "
        f"(levels {cfg.levels}, experiment {cfg.experiment!r}); Ctrl-C to stop",
        file=sys.stderr,
    )
    if ui:
        print(f"fedsim: runs in the Prefect UI: {ui}/deployments", file=sys.stderr)
    print(f"fedsim: runs log to MLflow at {uri}", file=sys.stderr)
    serve_benchmark(cfg, name=args.name, cron=args.cron)
    return 0
