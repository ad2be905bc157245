"""Benchmark: what CKKS aggregation's primitives cost for one McMahan CNN update.

The floor under an HE round: each client encrypts its whole update with the
key holder's public key (``mpc.he.encrypt_vector``, parameters ``mpc.he.PARAMS``),
the coordinator adds the ciphertexts, the key holder decrypts the sum. Times
one client's update (1,663,370 values) per step, on one core, with repeats,
and against it the same update copied in plain PyTorch (the cheapest thing a
plain round does with it) for scale. No training, no workers: the primitives.

    .venv/bin/python benchmarks/he_encryption.py [--repeats 5] [--clients 10]

The last column projects one round: ``--clients`` × the per-client steps
(level 2 runs them one client after another: TenSEAL holds the GIL while it
encrypts), once the key holder's decryption of the sum.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tenseal as ts
import torch
from provenance import git_commit
from table import write_table

from fl.models import build_model, get_state
from mpc import he
from mpc.flatten import flatten_update, float_keys


def _timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--out-prefix", type=Path, default=Path("benchmarks/results/he_encryption"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = get_state(build_model("cnn", seed=0))
    update = flatten_update(state, 1.0, float_keys(state))
    length = int(update.numel())
    chunks = he.chunk_count(length)
    secret_context = he.new_context()
    public = he.load_context(he.public_context_bytes(secret_context), secret=False)
    marks = he.canaries(os.urandom(he.CANARY_KEY_BYTES), chunks)
    ciphertexts = he.encrypt_vector(public, update, marks)
    one = ts.ckks_vector_from(public, ciphertexts[0])
    running = [ts.ckks_vector_from(public, data) for data in ciphertexts]

    def add_one_client() -> None:
        """What the coordinator does per client: add its ciphertexts into the running sum."""
        for total, data in zip(running, ciphertexts, strict=True):
            total.add_(ts.ckks_vector_from(public, data))

    def decrypt_all() -> None:
        for data in ciphertexts:
            ts.ckks_vector_from(secret_context, data).decrypt()

    per_round = {"deserialize + decrypt": 1}  # the others run once per client
    steps: dict[str, Callable[[], Any]] = {
        "copy (plain PyTorch)": lambda: update.clone(),
        "encrypt + serialize": lambda: he.encrypt_vector(public, update, marks),
        "deserialize + add to the sum": add_one_client,
        "deserialize + decrypt": decrypt_all,
    }
    load_before = os.getloadavg()
    raw = {name: _timed(fn, args.repeats) for name, fn in steps.items()}
    facts = {
        "command": shlex.join([".venv/bin/python", *sys.argv]),
        "git_commit": git_commit(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "values": length,
        "ciphertexts": chunks,
        "ciphertext_bytes": sum(len(c) for c in ciphertexts),
        "slots": one.size(),
        "params": {
            "poly_modulus_degree": he.PARAMS.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(he.PARAMS.coeff_mod_bit_sizes),
            "scale_bits": he.PARAMS.scale_bits,
        },
        "seconds": raw,
    }
    args.out_prefix.parent.mkdir(parents=True, exist_ok=True)
    args.out_prefix.with_suffix(".json").write_text(json.dumps(facts, indent=1) + "\n")
    lines = [
        f"`{facts['command']}`",
        "",
        f"One McMahan CNN update ({length:,} values) in {chunks} ciphertexts "
        f"({facts['ciphertext_bytes'] / 1e6:.1f} MB), CKKS N = "
        f"{he.PARAMS.poly_modulus_degree}, primes {he.PARAMS.coeff_mod_bit_sizes}, "
        f"scale 2^{he.PARAMS.scale_bits}, public-key encryption; one torch thread; "
        f"{args.repeats} repeats; commit {facts['git_commit']}, nproc {facts['nproc']}, "
        f"load {load_before[0]:.2f} before / {facts['load_after'][0]:.2f} after; "
        f"{facts['date']}.",
        "",
        f"| step, one client's update | median s | min–max s | ms per ciphertext "
        f"| one round of {args.clients} clients (median s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, seconds in raw.items():
        median = statistics.median(seconds)
        lines.append(
            f"| {name} | {median:.4f} | {min(seconds):.4f}–{max(seconds):.4f} | "
            f"{1e3 * median / chunks:.3f} | {per_round.get(name, args.clients) * median:.2f} |"
        )
    write_table(lines, args.out_prefix.with_suffix(".md"))


if __name__ == "__main__":
    main()
