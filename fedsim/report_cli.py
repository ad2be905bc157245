"""``fedsim report``: write the report of a benchmark run from what MLflow stored."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["write_report"]


def write_report(args: argparse.Namespace) -> int:
    """Build the report of ``args.run_id`` (default: the latest parent run) and print its paths.

    Imports are local so that ``fedsim --help`` does not pay for matplotlib,
    pandas and MLflow.
    """
    from flows.report import build_report

    files = build_report(args.experiment, args.run_id, Path(args.out))
    print(f"report: {files.html}")
    print(f"markdown: {files.markdown}")
    for image in files.images:
        print(f"plot: {image}")
    return 0
