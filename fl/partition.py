"""Split a labelled dataset among federated clients.

Three partitioners, all pure functions of (labels, client count, seeded generator):

- ``iid``: a seeded shuffle cut into near-equal parts — the "IID" setting of
  McMahan et al., *Communication-Efficient Learning of Deep Networks from
  Decentralized Data*, AISTATS 2017.
- ``shards:K``: McMahan et al.'s pathological non-IID setting — sort by label,
  cut into ``num_clients * K`` shards, deal ``K`` random shards to each client
  (with K = 2 most clients see only two labels).
- ``dirichlet:ALPHA``: label skew drawn per class from Dir(ALPHA), as in Hsu,
  Qi and Brown, *Measuring the Effects of Non-Identical Data Distribution for
  Federated Visual Classification*, 2019. Small ALPHA → few labels per client;
  large ALPHA → close to IID.

Every partitioner returns int64 index tensors sorted ascending, so that the
order of samples inside a partition never depends on the partitioner's internal
shuffle (the local trainer does its own seeded shuffling). A coordinator that
partitions (level 2) and a worker that partitions its own copy (level 3, 5) with
the same arguments therefore get identical tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fl.errors import ConfigError, DataError

__all__ = [
    "PARTITION_KINDS",
    "PartitionSpec",
    "Partitioning",
    "dirichlet_partition",
    "iid_partition",
    "parse_partition",
    "partition_indices",
    "shard_partition",
]

PARTITION_KINDS: tuple[str, ...] = ("iid", "dirichlet", "shards")

# Dirichlet draws can leave a client empty when ALPHA is tiny or clients are
# many; redraw this many times before giving up with a DataError.
_DIRICHLET_MAX_TRIES = 100

_SPEC_HELP = "expected iid, dirichlet:ALPHA (ALPHA > 0) or shards:K (K >= 1)"


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed ``--partition`` value; ``str(spec)`` parses back to an equal spec."""

    kind: str
    alpha: float | None = None
    shards_per_client: int | None = None

    def __post_init__(self) -> None:
        ok = (
            (self.kind == "iid" and self.alpha is None and self.shards_per_client is None)
            or (
                self.kind == "dirichlet"
                and self.alpha is not None
                and math.isfinite(self.alpha)
                and self.alpha > 0
                and self.shards_per_client is None
            )
            or (
                self.kind == "shards"
                and self.alpha is None
                and self.shards_per_client is not None
                and self.shards_per_client >= 1
            )
        )
        if not ok:
            raise ConfigError(
                f"bad partition spec kind={self.kind!r} alpha={self.alpha!r} "
                f"shards_per_client={self.shards_per_client!r}: {_SPEC_HELP}"
            )

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha!r}"
        if self.kind == "shards":
            return f"shards:{self.shards_per_client}"
        return self.kind


def parse_partition(spec: str) -> PartitionSpec:
    """Parse ``iid``, ``dirichlet:ALPHA`` or ``shards:K`` (the CLI's ``--partition``)."""
    kind, sep, arg = spec.strip().partition(":")
    try:
        if kind == "iid" and not sep:
            return PartitionSpec("iid")
        if kind == "dirichlet" and arg:
            return PartitionSpec("dirichlet", alpha=float(arg))
        if kind == "shards" and arg:
            return PartitionSpec("shards", shards_per_client=int(arg))
    except (ValueError, ConfigError):
        pass
    raise ConfigError(f"bad partition {spec!r}: {_SPEC_HELP}")


def _sorted_int64(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.sort(p.to(torch.int64)).values for p in parts]


def iid_partition(
    num_samples: int, num_clients: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Seeded shuffle of ``range(num_samples)`` cut into parts whose sizes differ by ≤ 1."""
    perm = torch.randperm(num_samples, generator=generator)
    return _sorted_int64(list(torch.tensor_split(perm, num_clients)))


def dirichlet_partition(
    labels: torch.Tensor, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[torch.Tensor]:
    """Label-skewed split (Hsu et al. 2019).

    For each class c, draw proportions p_c ~ Dir(alpha · 1_num_clients) and give
    client k the fraction p_c[k] of the (shuffled) samples of class c. Redraws
    everything until every client holds at least one sample, at most
    ``_DIRICHLET_MAX_TRIES`` times.
    """
    y = labels.cpu().numpy()
    classes = np.unique(y)
    for _ in range(_DIRICHLET_MAX_TRIES):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            # Cut points at the cumulative proportions; the last cut is len(idx).
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(np.int64)
            for k, part in enumerate(np.split(idx, cuts)):
                buckets[k].append(part)
        parts = [np.concatenate(b) for b in buckets]
        if min(len(p) for p in parts) >= 1:
            return _sorted_int64([torch.from_numpy(p) for p in parts])
    raise DataError(
        f"dirichlet:{alpha!r} left a client empty in {_DIRICHLET_MAX_TRIES} draws "
        f"({num_clients} clients, {len(y)} samples): use a larger ALPHA or fewer clients"
    )


def shard_partition(
    labels: torch.Tensor, num_clients: int, shards_per_client: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """McMahan et al.'s shards: sort by label, cut ``num_clients * K`` shards, deal K each.

    All samples are assigned; shard sizes differ by at most one. The sort is
    stable, so equal labels keep index order and the result depends only on the
    generator.
    """
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise DataError(
            f"shards:{shards_per_client} with {num_clients} clients needs {num_shards} "
            f"shards but there are only {len(labels)} samples"
        )
    order = torch.sort(labels, stable=True).indices
    shards = torch.tensor_split(order, num_shards)
    deal = torch.randperm(num_shards, generator=generator).view(num_clients, shards_per_client)
    parts = [torch.cat([shards[int(s)] for s in row]) for row in deal]
    return _sorted_int64(parts)


def partition_indices(
    spec: PartitionSpec, labels: torch.Tensor, num_clients: int, seed: int
) -> list[torch.Tensor]:
    """Partition ``labels`` among ``num_clients`` as ``spec`` says, seeded by ``seed``.

    Returns ``num_clients`` disjoint int64 index tensors, each sorted ascending,
    that together cover ``range(len(labels))``.
    """
    if labels.dim() != 1:
        raise DataError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if num_clients < 1:
        raise ConfigError(f"number of clients must be >= 1, got {num_clients}")
    if num_clients > len(labels):
        raise DataError(f"{num_clients} clients but only {len(labels)} samples to share")
    if seed < 0:
        raise ConfigError(f"partition seed must be >= 0, got {seed}")
    if spec.kind == "iid":
        return iid_partition(len(labels), num_clients, torch.Generator().manual_seed(seed))
    if spec.kind == "dirichlet":
        assert spec.alpha is not None  # guaranteed by PartitionSpec.__post_init__
        return dirichlet_partition(labels, num_clients, spec.alpha, np.random.default_rng(seed))
    assert spec.kind == "shards" and spec.shards_per_client is not None
    generator = torch.Generator().manual_seed(seed)
    return shard_partition(labels, num_clients, spec.shards_per_client, generator)


@dataclass(frozen=True)
class Partitioning:
    """How a federation's training data is cut: which dataset, by which
    partitioner (a ``--partition`` spec), into how many parts, with which seed,
    from how many training samples (None: all).

    A worker that loads its own part and a coordinator that cuts the data hold
    the same tensors exactly when their partitionings are equal (and the data
    files the same): partitions are a pure function of these values.
    """

    dataset: str  # the data's name: a built-in dataset or a task's reference (fl.tasks.data_task)
    partitioner: str
    count: int
    seed: int
    limit: int | None = None

    def indices(self, labels: torch.Tensor) -> list[torch.Tensor]:
        """Every part's sample indices into ``labels`` (the training split's)."""
        return partition_indices(parse_partition(self.partitioner), labels, self.count, self.seed)

    def describe(self, index: int) -> str:
        """One line naming part ``index``, reported in Pong and compared by the coordinator."""
        return (
            f"{self.dataset} {self.partitioner} {index}/{self.count} seed={self.seed} "
            f"limit={'all' if self.limit is None else self.limit}"
        )
