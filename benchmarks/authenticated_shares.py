"""Benchmark: what SPDZ MACs cost on shared tensors, against the same without and plaintext.

Over 2 virtual parties and a provider in this process, each operation runs on
256×256 tensors three ways in one invocation: plaintext float32 torch,
``remote_shares`` (Z/2^64, no MACs) and ``authenticated_shares`` (F_p with
MACs). Shared operations are timed whole — the provider's dealing of their
tuple included, as neither group has it dealt ahead here — and ``get`` with
MACs includes the MAC check. Reported: the median and range of ``--repeats``
timings, and the ratios of medians.

    .venv/bin/python benchmarks/authenticated_shares.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from provenance import run_facts
from table import write_table

from fedsim.cli import quiet_defaults

quiet_defaults()

from mpc.protocols.authenticated_shares import AuthenticatedGroup  # noqa: E402
from mpc.protocols.remote_shares import ShareGroup  # noqa: E402
from workers.memory import tune_malloc  # noqa: E402
from workers.virtual import VirtualWorker  # noqa: E402

N = 256

# name → (shared operation, the plaintext operation it stands for)
OPS: dict[str, tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]] = {
    "add": (lambda x, y: x + y, lambda x, y: x + y),
    "mul by public int": (lambda x, _: x * 3, lambda x, _: x * 3),
    "mul": (lambda x, y: x * y, lambda x, y: x * y),
    "square": (lambda x, _: x.square(), lambda x, _: x * x),
    "matmul": (lambda x, y: x @ y, lambda x, y: x @ y),
    "get": (lambda x, _: x.get(), lambda x, _: x.clone()),
}


def _time(fn: Callable[[], Any], repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--out-prefix", type=Path, default=Path("benchmarks/results/authenticated_shares")
    )
    args = parser.parse_args()
    tune_malloc()
    load_before = os.getloadavg()
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(N, N, generator=gen), torch.randn(N, N, generator=gen)
    parties = [VirtualWorker("alice"), VirtualWorker("bob")]
    provider = VirtualWorker("charlie")
    results: dict[str, dict[str, dict[str, float]]] = {}
    with (
        ShareGroup(parties, provider) as plain,
        AuthenticatedGroup(parties, provider, fractional_bits=12) as macs,
    ):
        px, py = plain.share(a), plain.share(b)
        mx, my = macs.share(a), macs.share(b)
        for name, (op, plain_op) in OPS.items():
            results[name] = {
                "plaintext": _summary(_time(lambda f=plain_op: f(a, b), args.repeats)),
                "no MACs": _summary(_time(lambda f=op: f(px, py), args.repeats)),
                "MACs": _summary(_time(lambda f=op: f(mx, my), args.repeats)),
            }
            print(name, {k: f"{v['median'] * 1e3:.2f} ms" for k, v in results[name].items()})
    facts = {**run_facts(load_before), "n": N, "repeats": args.repeats, "results": results}
    args.out_prefix.parent.mkdir(parents=True, exist_ok=True)
    args.out_prefix.with_suffix(".json").write_text(json.dumps(facts, indent=1) + "\n")

    def cell(r: dict[str, float]) -> str:
        return f"{r['median'] * 1e3:.2f} ({r['min'] * 1e3:.2f}–{r['max'] * 1e3:.2f})"

    rows = []
    for name, r in results.items():
        base, plain_ms, mac_ms = (r[k]["median"] for k in ("plaintext", "no MACs", "MACs"))
        rows.append(
            f"| {name} | {cell(r['plaintext'])} | {cell(r['no MACs'])} | {cell(r['MACs'])} "
            f"| {plain_ms / base:.0f}× | {mac_ms / base:.0f}× | {mac_ms / plain_ms:.1f}× |"
        )
    lines = [
        f"`{facts['command']}`",
        "",
        f"{N}×{N} float32 operands, 2 virtual parties and a provider; commit "
        f"{facts['source']['commit']}{' (dirty)' if facts['source']['dirty'] else ''}, nproc "
        f"{facts['nproc']}, load {load_before[0]:.2f} before / {facts['load_after'][0]:.2f} "
        f"after; {facts['date']}. Milliseconds, median (range) of {args.repeats}; shared "
        "operations include the provider's dealing of their tuple; `get` with MACs includes "
        "the MAC check. No MACs: Z/2^64, 16 fractional bits, products truncated; MACs: F_p, "
        "12 fractional bits, not truncated.",
        "",
        "| operation | plaintext | no MACs | MACs | no MACs / plaintext | MACs / plaintext "
        "| MACs / no MACs |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    write_table(lines, args.out_prefix.with_suffix(".md"))


if __name__ == "__main__":
    main()
