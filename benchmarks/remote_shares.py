"""Benchmark: operations on shared tensors that live on workers, against plaintext torch.

For 2 and 3 parties (plus a provider), over virtual workers in this process and
over websocket worker processes on this host, each operation runs on shared
256×256 tensors (a convolution on 8 shared 1×28×28 images by 8 shared 5×5
filters): its online phase is timed with the tuples it needs dealt beforehand,
and the provider's dealing (the offline phase) is timed apart. The plaintext
reference is the same operation on float32 tensors in the same invocation.
Reported: the median and range of ``--repeats`` timings and the ratio of
medians, online against plaintext.

    .venv/bin/python benchmarks/remote_shares.py [--repeats 7] [--transports virtual,websocket]
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
import torch.nn.functional as F
from provenance import run_facts
from table import write_table
from transports import workers_over

from fedsim.cli import quiet_defaults

quiet_defaults()

from mpc.protocols.remote_shares import RemoteShared, ShareGroup  # noqa: E402
from workers.memory import tune_malloc  # noqa: E402

N = 256
IMAGES, FILTERS = (8, 1, 28, 28), (8, 1, 5, 5)


def _ops() -> dict[str, tuple[str | None, Callable[..., Any], Callable[..., Any]]]:
    """name → (the tuple kind it consumes, shared operation, plaintext operation)."""
    return {
        "add": (None, lambda x, y, *_: x + y, lambda x, y, *_: x + y),
        "mul by public": (None, lambda x, *_: x * 0.5, lambda x, *_: x * 0.5),
        "mul": ("mul", lambda x, y, *_: x * y, lambda x, y, *_: x * y),
        "square": ("square", lambda x, *_: x.square(), lambda x, *_: x * x),
        "matmul": ("matmul", lambda x, y, *_: x @ y, lambda x, y, *_: x @ y),
        "conv2d": (
            "conv2d",
            lambda _x, _y, img, w: img.conv2d(w, padding=2),
            lambda _x, _y, img, w: F.conv2d(img, w, padding=2),
        ),
        "get": (None, lambda x, *_: x.get(), lambda x, *_: x.clone()),
    }


def _median_range(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def _prefetch(group: ShareGroup, name: str, kind: str | None, count: int) -> float:
    if kind is None:
        if name == "mul by public" and len(group.parties) > 2:  # its truncation pairs
            start = time.perf_counter()
            group.prefetch("trunc", [(N, N)], count, bits=group.encoder.fractional_bits)
            return time.perf_counter() - start
        return 0.0
    shapes = {
        "mul": [(N, N), (N, N)],
        "square": [(N, N)],
        "matmul": [(N, N), (N, N)],
        "conv2d": [IMAGES, FILTERS],
    }[kind]
    kwargs = {"stride": 1, "padding": 2} if kind == "conv2d" else {}
    start = time.perf_counter()
    group.prefetch(kind, shapes, count, **kwargs)
    if len(group.parties) > 2:  # truncation pairs for the products' rescaling
        out = [IMAGES[0], FILTERS[0], 28, 28] if kind == "conv2d" else [N, N]
        group.prefetch("trunc", [out], count, bits=group.encoder.fractional_bits)
    return time.perf_counter() - start


def _measure(transport: str, parties: int, repeats: int) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, N, generator=gen), torch.randn(N, N, generator=gen)
    img, w = torch.randn(IMAGES, generator=gen), torch.randn(FILTERS, generator=gen) / 5
    rows = []
    parallel = transport != "virtual"
    with (
        workers_over(transport, parties + 1) as workers,
        ShareGroup(workers[:parties], workers[parties], parallel=parallel) as g,
    ):
        shared = [g.share(x), g.share(y), g.share(img), g.share(w)]
        for name, (kind, secure_op, plain_op) in _ops().items():
            offline = _prefetch(g, name, kind, repeats + 1)
            online, plain = [], []
            for _ in range(repeats + 1):  # the first of each is a warm-up, not kept
                start = time.perf_counter()
                result = secure_op(*shared)
                online.append(time.perf_counter() - start)
                start = time.perf_counter()
                plain_op(x, y, img, w)
                plain.append(time.perf_counter() - start)
                if isinstance(result, RemoteShared):
                    result.delete()
            online, plain = online[1:], plain[1:]
            elements = (IMAGES[0] * FILTERS[0] * 28 * 28) if name == "conv2d" else N * N
            rows.append(
                {
                    "transport": transport,
                    "parties": parties,
                    "op": name,
                    "online_s": online,
                    "plaintext_s": plain,
                    "offline_s_per_tuple": offline / (repeats + 1) if offline else None,
                    "elements": elements,
                }
            )
            print(
                f"{transport} {parties}P {name}: online {statistics.median(online) * 1e3:.2f} "
                f"ms, plaintext {statistics.median(plain) * 1e3:.3f} ms",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--transports", default="virtual,websocket")
    parser.add_argument("--out-prefix", type=Path, default=Path("benchmarks/results/remote_shares"))
    args = parser.parse_args()
    tune_malloc()  # as fedsim's CLI does
    load_before = os.getloadavg()
    rows = []
    for transport in args.transports.split(","):
        for parties in (2, 3):
            rows += _measure(transport, parties, args.repeats)
    facts = {
        **run_facts(load_before),
        "rows": rows,
    }
    args.out_prefix.parent.mkdir(parents=True, exist_ok=True)
    args.out_prefix.with_suffix(".json").write_text(json.dumps(facts, indent=1) + "\n")
    lines = [
        f"`{facts['command']}`",
        "",
        f"Shared 256×256 float tensors (conv2d: 8 images 1×28×28 by 8 filters 5×5, padding 2), "
        f"fixed point with 16 fractional bits; {args.repeats} repeats after a warm-up; "
        f"commit {facts['source']['commit']}{' (dirty)' if facts['source']['dirty'] else ''}, "
        f"nproc {facts['nproc']}, torch threads {facts['torch_threads']}, load "
        f"{load_before[0]:.2f} before / {facts['load_after'][0]:.2f} after; {facts['date']}. "
        "Online: the operation with its tuples dealt beforehand (the coordinator's two "
        "rounds to the parties for a product, one for a linear operation); offline: the "
        "provider's dealing, per tuple (plus a truncation pair for 3 parties).",
        "",
        "| transport | parties | operation | online ms (median, min–max) | plaintext ms | "
        "× plaintext | elements/s online | offline ms per tuple |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        on, on_lo, on_hi = _median_range(row["online_s"])
        plain = statistics.median(row["plaintext_s"])
        offline = row["offline_s_per_tuple"]
        lines.append(
            f"| {row['transport']} | {row['parties']} | {row['op']} | "
            f"{on * 1e3:.2f} ({on_lo * 1e3:.2f}–{on_hi * 1e3:.2f}) | {plain * 1e3:.3f} | "
            f"{on / plain:.0f}× | {row['elements'] / on:,.0f} | "
            f"{'—' if offline is None else f'{offline * 1e3:.1f}'} |"
        )
    write_table(lines, args.out_prefix.with_suffix(".md"))


if __name__ == "__main__":
    main()
