"""The soak's report: its verdict, the markdown table (printed, or written with
``--write`` next to the raw figures as JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soak_coordinator import PARTITION, RSS_INTERVAL, TRAIN_SAMPLES, Coordinator, WorkerProcess
from soak_peers import HOST, HOSTILE_SOURCES
from soak_tally import Tally
from table import write_table


@dataclass(frozen=True)
class _Counts:
    """What the verdict and the table's first rows are made of."""

    pre: int  # hostile frames before authentication
    post: int  # hostile frames in the coordinator's bursts
    connections: int  # hostile connections, silent ones included
    accepted: int  # strangers the worker let in
    code_1011: int  # 1011 closes the peers saw
    crashes: int
    hangs: int
    internal: int  # `internal` error replies to the coordinator


def _count(
    data: dict[str, Any], coordinator: Coordinator, exited: int | None, findings: dict[str, Any]
) -> _Counts:
    frames, answers = data["frames"], data["answers"]
    code_1011 = sum(n for key, n in answers.items() if "1011" in key)
    crashes = (exited is not None) + (findings["tracebacks"] > 0) + (findings["code_1011"] > 0)
    return _Counts(
        pre=sum(n for key, n in frames.items() if key.startswith("pre-auth")),
        post=sum(n for key, n in frames.items() if key.startswith("post-auth")),
        connections=sum(n for key, n in answers.items() if key.startswith("pre-auth")),
        accepted=sum(n for key, n in answers.items() if "ACCEPTED" in key),
        code_1011=code_1011,
        crashes=crashes + (code_1011 > 0),
        hangs=sum(data["hangs"].values()),
        internal=sum(coordinator.internal_errors.values()),
    )


def report(
    args: argparse.Namespace, command: str, seconds: float, tally: Tally,
    coordinator: Coordinator, worker: WorkerProcess, exited: int | None,
    findings: dict[str, Any],
) -> int:  # fmt: skip
    data = tally.as_dict()
    counts = _count(data, coordinator, exited, findings)
    ok = not (
        counts.crashes
        or counts.hangs
        or coordinator.objects_lost
        or counts.accepted
        or counts.internal
    )
    lines = [
        *_introduction(args, command, ok),
        *_measures(seconds, counts, coordinator, worker, exited, findings),
        "",
        "Pre-authentication attacks (one frame per connection; a silent peer sends none):",
        "",
        "| attack | connections | frames | slowest s | answers |",
        "|---|---:|---:|---:|---|",
        *_answer_rows(data, "pre-auth"),
        "",
        "Post-authentication frames (the coordinator's bursts; every one must get a reply):",
        "",
        "| frame | sent | frames | slowest s | replies |",
        "|---|---:|---:|---:|---|",
        *_answer_rows(data, "post-auth"),
    ]
    if worker.samples:
        step = max(len(worker.samples) // 12, 1)
        shown = worker.samples[::step] + ([worker.samples[-1]] if len(worker.samples) > 1 else [])
        series = ", ".join(f"{s['t']:.0f} s: {s['rss_mb']:.0f}" for s in _unique_t(shown))
        lines += ["", f"Worker RSS MB over time (every {RSS_INTERVAL:g} s, thinned): {series}."]
    problems = _problems(coordinator, data, findings)
    if problems:
        lines += ["", "Problems seen:", "", *(f"- {p}" for p in problems)]
    if args.write:
        write_table(lines, args.out)
        raw = {
            "command": command,
            "date": str(dt.date.today()),
            "seconds": seconds,
            "ok": ok,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "coordinator": _coordinator_raw(coordinator),
            "hostile": data,
            "worker": {"exited": exited, "log": findings, "samples": worker.samples},
        }
        args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    else:
        print("\n".join(lines))
    return 0 if ok else 1


def _introduction(args: argparse.Namespace, command: str, ok: bool) -> list[str]:
    return [
        f"# Soak: one websocket worker under hostile load ({dt.date.today()}, `{command}`)",
        "",
        f"One worker process (`fedsim worker serve --partition {PARTITION} --train-samples "
        f"{TRAIN_SAMPLES} --threads 1`, token file) on {HOST}; a coordinator on {HOST} "
        "looping connect, put the MLP state, train one epoch, get, check object counts, "
        f"close, with a burst of {args.burst_frames} hostile frames on its own authenticated "
        f"connection every {args.burst_every} round(s); {len(HOSTILE_SOURCES)} × "
        f"{args.threads_per_source} unauthenticated attackers and {len(HOSTILE_SOURCES)} × "
        f"{args.silent_per_source} silent peers (reconnecting {args.silent_pause:g} s after "
        f"each drop) from {HOSTILE_SOURCES[0]}..{HOSTILE_SOURCES[-1]} (in a "
        f"{args.hostile_in}); hangs: over {args.op_timeout:g} s for a hostile socket operation, "
        f"{args.request_timeout:g} s for a coordinator request. {os.cpu_count()} cores. Verdict: "
        f"**{'PASS' if ok else 'FAIL'}**.",
        "",
    ]


def _measures(
    seconds: float, counts: _Counts, coordinator: Coordinator, worker: WorkerProcess,
    exited: int | None, findings: dict[str, Any],
) -> list[str]:  # fmt: skip
    pre, post = counts.pre, counts.post
    rss = [s["rss_mb"] for s in worker.samples]
    times = sorted(coordinator.round_seconds)
    state = "running until stopped" if exited is None else f"EXITED with {exited}"
    return [
        "| measure | value |",
        "|---|---:|",
        f"| duration s | {seconds:.1f} |",
        f"| coordinator rounds completed | {coordinator.rounds} |",
        f"| coordinator rounds failed | {len(coordinator.failures)} |",
        "| round s, median / max | "
        + (f"{statistics.median(times):.2f} / {times[-1]:.2f} |" if times else "— |"),
        f"| bursts on the authenticated connection | {coordinator.bursts} |",
        f"| hostile frames, pre-auth | {pre} |",
        f"| hostile frames, post-auth | {post} |",
        f"| hostile frames, total | {pre + post} ({(pre + post) / max(seconds, 1e-9):.0f}/s) |",
        f"| hostile connections (silent included) | {counts.connections} |",
        f"| strangers accepted | {counts.accepted} |",
        f"| worker crashes | {counts.crashes} ({state}; log: {findings['tracebacks']} Traceback, "
        f"{findings['code_1011']} ' 1011 ' of {findings['lines']} lines; "
        f"1011 seen by peers: {counts.code_1011}) |",
        f"| `internal` error replies | {counts.internal} |",
        f"| hangs (timeouts) | {counts.hangs} |",
        f"| objects lost | {coordinator.objects_lost} |",
        "| worker RSS MB, first / max / last | "
        + (f"{rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f} |" if rss else "— |"),
        f"| worker CPU, share of one core | {_cpu_share(worker.samples)} |",
        f"| worker open fds / threads, last | {_last(worker.samples, 'fds')} / "
        f"{_last(worker.samples, 'threads')} |",
        f"| worker log | {findings['lines']} lines, {findings['bytes'] / 2**20:.1f} MB; "
        + ", ".join(f"{level} {n}" for level, n in sorted(findings["levels"].items()))
        + " |",
    ]


def _problems(
    coordinator: Coordinator, data: dict[str, Any], findings: dict[str, Any]
) -> list[str]:
    problems = [
        *(f"coordinator failure: {m}" for m in Counter(coordinator.failures)),
        *(f"object count: {m}" for m in coordinator.count_mismatches[:20]),
        *(f"internal error reply: {m} (×{n})" for m, n in coordinator.internal_errors.items()),
        *(f"hang: {m} (×{n})" for m, n in data["hangs"].items()),
        *(f"note: {m} (×{n})" for m, n in data["notes"].items()),
    ]
    if findings["first_traceback"]:
        problems.append("first traceback in the worker log:\n\n```\n"
                        + findings["first_traceback"] + "\n```")  # fmt: skip
    problems += [f"1011 in the worker log: {line}" for line in findings["lines_1011"]]
    return problems


def _coordinator_raw(coordinator: Coordinator) -> dict[str, Any]:
    return {
        "rounds": coordinator.rounds,
        "failures": coordinator.failures,
        "round_seconds": coordinator.round_seconds,
        "bursts": coordinator.bursts,
        "objects_lost": coordinator.objects_lost,
        "count_mismatches": coordinator.count_mismatches,
        "internal_errors": dict(coordinator.internal_errors),
    }


def _answers_by_kind(answers: dict[str, int], phase: str) -> dict[str, Counter[str]]:
    table: dict[str, Counter[str]] = {}
    for key, count in answers.items():
        where, answer = key.split(" -> ", 1)
        got_phase, kind = where.split(": ", 1)
        if got_phase == phase:
            table.setdefault(kind, Counter())[answer] += count
    return table


def _answer_rows(tally: dict[str, Any], phase: str) -> list[str]:
    rows = []
    for kind, answers in sorted(_answers_by_kind(tally["answers"], phase).items()):
        listed = ", ".join(f"{answer}: {n}" for answer, n in answers.most_common())
        where = f"{phase}: {kind}"
        rows.append(
            f"| {kind} | {sum(answers.values())} | {tally['frames'].get(where, 0)} "
            f"| {tally['slowest'].get(where, 0.0):.2f} | {listed} |"
        )
    return rows


def _cpu_share(samples: list[dict[str, float]]) -> str:
    if len(samples) < 2 or samples[-1]["t"] <= samples[0]["t"]:
        return "—"
    share = (samples[-1]["cpu_s"] - samples[0]["cpu_s"]) / (samples[-1]["t"] - samples[0]["t"])
    return f"{share:.0%}"


def _last(samples: list[dict[str, float]], key: str) -> str:
    return f"{samples[-1][key]:.0f}" if samples else "—"


def _unique_t(samples: list[dict[str, float]]) -> Iterator[dict[str, float]]:
    seen = set()
    for sample in samples:
        if sample["t"] not in seen:
            seen.add(sample["t"])
            yield sample
