"""The run profiles: defaults a `fedsim run --profile` starts from.

Plain data apart from ``flows.config`` (which imports torch through ``fl``),
so that the command line can show them in ``--help`` without importing torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PROFILES"]

PROFILES: dict[str, dict[str, Any]] = {
    # Meant to finish in minutes on 2 cores with every FedAvg level >= 80%
    # (docs/levels.md, "The quick run"). Four workers, so that level 4's worker
    # processes and level 5's daemons share two cores without thrashing.
    "quick": {
        "levels": "baseline,1,2,3,4",
        "workers": 4,
        "rounds": 6,
        "epochs": 1,
        "batch_size": 32,
        "lr": 0.1,
        "train_samples": 8_000,
        "test_samples": 2_000,
    },
    # Byzantine robustness (benchmarks/robustness.py): 10 IID clients of which 2
    # flip the sign of their updates; pick the defence with --aggregator, the
    # attack with --attack / --attackers (--attack none --attackers 0: clean).
    "robustness": {
        "levels": "2",
        "workers": 10,
        "rounds": 5,
        "epochs": 1,
        "batch_size": 32,
        "lr": 0.05,
        "train_samples": 12_000,
        "test_samples": 2_000,
        "attack": "sign-flip",
        "attackers": 2,
    },
    # The whole dataset: the setting of the README's benchmark table.
    "full": {
        "levels": "baseline,1,2,3",
        "workers": 10,
        "rounds": 10,
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "train_samples": None,
        "test_samples": None,
    },
}
