from __future__ import annotations

import numpy as np
import pytest
import torch

from fl.errors import ConfigError, DataError
from fl.partition import (
    PartitionSpec,
    dirichlet_partition,
    iid_partition,
    parse_partition,
    partition_indices,
    shard_partition,
)

SPECS = ["iid", "dirichlet:0.5", "shards:2"]


def make_labels(n: int = 997, classes: int = 10, seed: int = 0) -> torch.Tensor:
    """Roughly balanced labels in random order (997: shard and class edges do not align)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.permutation(np.arange(n) % classes)).to(torch.int64)


def distinct_labels(labels: torch.Tensor, parts: list[torch.Tensor]) -> list[int]:
    return [len(np.unique(labels[p].numpy())) for p in parts]


def top_label_share(labels: torch.Tensor, parts: list[torch.Tensor]) -> list[float]:
    return [float(np.bincount(labels[p].numpy()).max() / len(p)) for p in parts]


@pytest.mark.parametrize("spec", SPECS)
def test_partition_is_disjoint_cover_sorted_int64(spec: str) -> None:
    # Prepare
    labels = make_labels()

    # Execute
    parts = partition_indices(parse_partition(spec), labels, 10, seed=1)

    # Assert
    assert len(parts) == 10
    assert all(p.dtype == torch.int64 and len(p) >= 1 for p in parts)
    assert all(bool((p[1:] > p[:-1]).all()) for p in parts)  # strictly ascending
    everything = np.sort(np.concatenate([p.numpy() for p in parts]))
    np.testing.assert_array_equal(everything, np.arange(len(labels)))


@pytest.mark.parametrize("spec", SPECS)
def test_partition_is_seeded(spec: str) -> None:
    # Prepare
    labels = make_labels()
    parsed = parse_partition(spec)

    # Execute
    first = partition_indices(parsed, labels, 10, seed=7)
    again = partition_indices(parsed, labels, 10, seed=7)
    other = partition_indices(parsed, labels, 10, seed=8)

    # Assert
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_iid_sizes_differ_by_at_most_one() -> None:
    # Execute
    parts = iid_partition(103, 10, torch.Generator().manual_seed(0))

    # Assert
    sizes = [len(p) for p in parts]
    assert sum(sizes) == 103
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_is_label_skewed() -> None:
    # Prepare
    labels = make_labels(n=2000)

    # Execute
    iid = partition_indices(parse_partition("iid"), labels, 10, seed=0)
    skewed = dirichlet_partition(labels, 10, 0.1, np.random.default_rng(0))

    # Assert: IID clients see all 10 labels in near-equal shares; Dir(0.1) clients
    # see fewer labels and are dominated by one of them.
    assert np.mean(distinct_labels(labels, iid)) == 10
    assert np.mean(distinct_labels(labels, skewed)) <= 7.5
    assert np.mean(top_label_share(labels, iid)) < 0.2
    assert np.mean(top_label_share(labels, skewed)) > 0.4


def test_dirichlet_large_alpha_is_close_to_iid() -> None:
    # Prepare
    labels = make_labels(n=2000)

    # Execute
    parts = dirichlet_partition(labels, 5, 1000.0, np.random.default_rng(0))

    # Assert: each client's label histogram is near uniform (10 % per class).
    for p in parts:
        hist = np.bincount(labels[p].numpy(), minlength=10) / len(p)
        assert np.abs(hist - 0.1).max() < 0.05


def test_dirichlet_that_cannot_fill_every_client_raises() -> None:
    # Prepare: two classes, tiny alpha → mass lands on a handful of the 20 clients.
    labels = torch.tensor([0, 1] * 10)

    # Execute / Assert
    with pytest.raises(DataError, match="left a client empty"):
        dirichlet_partition(labels, 20, 0.001, np.random.default_rng(0))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shards_bound_labels_per_client(k: int) -> None:
    # Prepare
    labels = make_labels()

    # Execute
    parts = shard_partition(labels, 10, k, torch.Generator().manual_seed(0))

    # Assert: a shard spans at most 2 labels (it is a slice of the sorted labels
    # shorter than a class), so a client with k shards has at most 2k labels.
    assert max(distinct_labels(labels, parts)) <= 2 * k
    shard = len(labels) // (10 * k)
    assert all(k * shard <= len(p) <= k * (shard + 1) for p in parts)


def test_shards_need_enough_samples() -> None:
    with pytest.raises(DataError, match="needs 30 shards"):
        shard_partition(torch.zeros(20, dtype=torch.int64), 10, 3, torch.Generator())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iid", PartitionSpec("iid")),
        ("dirichlet:0.5", PartitionSpec("dirichlet", alpha=0.5)),
        ("dirichlet:2", PartitionSpec("dirichlet", alpha=2.0)),
        ("shards:2", PartitionSpec("shards", shards_per_client=2)),
    ],
)
def test_parse_partition_round_trips(text: str, expected: PartitionSpec) -> None:
    # Execute
    spec = parse_partition(text)

    # Assert
    assert spec == expected
    assert parse_partition(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    [
        *("", "IID", "iid:3", "random"),
        *("dirichlet", "dirichlet:", "dirichlet:x", "dirichlet:0", "dirichlet:-1"),
        *("dirichlet:nan", "dirichlet:inf", "shards:0", "shards:1.5", "shards:k"),
    ],
)
def test_parse_partition_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_partition(text)
    assert repr(text) in str(info.value)
    assert "expected iid, dirichlet:ALPHA (ALPHA > 0) or shards:K (K >= 1)" in str(info.value)


def test_partition_indices_validates_client_count() -> None:
    # Prepare
    labels = make_labels(n=5)
    spec = parse_partition("iid")

    # Execute / Assert
    with pytest.raises(ConfigError, match="got 0"):
        partition_indices(spec, labels, 0, seed=0)
    with pytest.raises(DataError, match="6 clients but only 5 samples"):
        partition_indices(spec, labels, 6, seed=0)
    with pytest.raises(ConfigError, match="got -1"):
        partition_indices(spec, labels, 2, seed=-1)
