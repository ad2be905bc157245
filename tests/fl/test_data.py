from __future__ import annotations

import gzip
import hashlib
import re
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import fl.data
from fl.data import dataset_checksum, load_split, resolve_data_root
from fl.errors import ConfigError, DataError
from fl.partition import Partitioning, parse_partition, partition_indices
from fl.task_data import load_partition

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_debian = pytest.mark.skipif(
    not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx format: 0, 0, type 0x08 (ubyte), ndim, big-endian int32 dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return header + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def synthetic_files(seed: int = 0) -> dict[str, bytes]:
    """Tiny train (12) and test (5) sets of random uint8 images and labels."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", 12), ("t10k", 5)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        out[f"{prefix}-images-idx3-ubyte"] = idx_bytes(images)
        out[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(labels)
    return out


def write_files(directory: Path, files: dict[str, bytes], *, gz: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return directory


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, private cache root and no ambient $FEDSIM_DATA."""
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDSIM_DATA", raising=False)
    return tmp_path / "cache"


def expected_split(
    files: dict[str, bytes], prefix: str, mean: float, std: float
) -> tuple[np.ndarray, np.ndarray]:
    images = np.frombuffer(files[f"{prefix}-images-idx3-ubyte"][16:], dtype=np.uint8)
    labels = np.frombuffer(files[f"{prefix}-labels-idx1-ubyte"][8:], dtype=np.uint8)
    x = ((images.astype(np.float32) / 255.0 - mean) / std).reshape(-1, 1, 28, 28)
    return x, labels.astype(np.int64)


def test_flat_gz_dir_is_extracted_and_loaded(tmp_path: Path, cache: Path) -> None:
    # Prepare
    files = synthetic_files()
    source = write_files(tmp_path / "src", files, gz=True)

    # Execute
    train = load_split("fashion-mnist", train=True, data_dir=source)
    test = load_split("fashion-mnist", train=False, data_dir=source)

    # Assert
    for split, prefix in ((train, "train"), (test, "t10k")):
        x, y = expected_split(files, prefix, 0.2860, 0.3530)
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        np.testing.assert_allclose(split.x.numpy(), x, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(split.y.numpy(), y)
    root = resolve_data_root("fashion-mnist", source)
    assert root.is_relative_to(cache)
    assert not list(root.rglob("*.tmp"))


def test_mnist_from_flat_plain_files_uses_mnist_normalization(tmp_path: Path, cache: Path) -> None:
    # Prepare
    files = synthetic_files(seed=1)
    source = write_files(tmp_path / "mnist", files, gz=False)

    # Execute
    split = load_split("mnist", train=True, data_dir=source, limit=4)

    # Assert
    x, y = expected_split(files, "train", 0.1307, 0.3081)
    np.testing.assert_allclose(split.x.numpy(), x[:4], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(split.y.numpy(), y[:4])


def test_torchvision_layout_is_used_in_place(tmp_path: Path, cache: Path) -> None:
    # Prepare
    write_files(tmp_path / "FashionMNIST" / "raw", synthetic_files(), gz=False)

    # Execute
    root = resolve_data_root("fashion-mnist", tmp_path)

    # Assert
    assert root == tmp_path
    assert not cache.exists()


def test_checksum_hashes_uncompressed_bytes(tmp_path: Path, cache: Path) -> None:
    # Prepare
    files = synthetic_files()
    gz_dir = write_files(tmp_path / "gz", files, gz=True)
    plain_dir = write_files(tmp_path / "plain", files, gz=False)
    reference = hashlib.sha256()
    for name in NAMES:
        reference.update(name.encode() + b"\0" + files[name])

    # Execute
    from_gz = dataset_checksum("fashion-mnist", gz_dir)
    from_plain = dataset_checksum("fashion-mnist", plain_dir)

    # Assert
    assert from_gz == from_plain == reference.hexdigest()


def test_fedsim_data_env_is_searched(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: $FEDSIM_DATA may hold one folder per dataset.
    write_files(tmp_path / "data" / "mnist", synthetic_files(), gz=True)
    monkeypatch.setenv("FEDSIM_DATA", str(tmp_path / "data"))

    # Execute
    split = load_split("mnist", train=False)

    # Assert
    assert len(split) == 5


def test_missing_or_empty_data_dir_is_named(tmp_path: Path, cache: Path) -> None:
    # Prepare
    missing = tmp_path / "nowhere"
    empty = tmp_path / "empty"
    empty.mkdir()

    # Execute / Assert
    with pytest.raises(DataError, match=re.escape(f"data dir '{missing}' does not exist")):
        load_split("fashion-mnist", train=True, data_dir=missing)
    with pytest.raises(
        DataError, match=re.escape(f"data dir '{empty}' holds no fashion-mnist files")
    ):
        load_split("fashion-mnist", train=True, data_dir=empty)


def test_nothing_found_names_every_way_to_provide_data(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: no Debian dir, no cache, and a download that fails like offline.
    monkeypatch.setattr(
        fl.data, "_DEBIAN_DIRS", {"fashion-mnist": tmp_path / "no", "mnist": tmp_path}
    )

    def offline(dataset: str, root: Path) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(fl.data, "_download", offline)

    # Execute
    with pytest.raises(DataError) as info:
        resolve_data_root("fashion-mnist")

    # Assert
    message = str(info.value)
    assert "\n" not in message
    for way in ("--data-dir", "$FEDSIM_DATA", "apt-get install dataset-fashion-mnist", "internet"):
        assert way in message


@pytest.mark.parametrize(
    ("corrupt", "fragment"),
    [
        (lambda data: b"\x01\x02" + data[2:], "is not an idx file of uint8 with 3"),
        (lambda data: data[:3], "is not an idx file of uint8 with 3"),
        (lambda data: data[:100], "declares 12x28x28 values but holds 84 bytes"),
    ],
)
def test_a_corrupt_file_is_named_with_a_reason(
    tmp_path: Path, cache: Path, corrupt: Callable[[bytes], bytes], fragment: str
) -> None:
    # Prepare: the training images with a broken header, or cut short.
    files = synthetic_files()
    files["train-images-idx3-ubyte"] = corrupt(files["train-images-idx3-ubyte"])
    source = write_files(tmp_path / "src", files, gz=False)

    # Execute
    with pytest.raises(DataError) as error:
        load_split("fashion-mnist", train=True, data_dir=source)

    # Assert: the file named, with a reason.
    assert "train-images-idx3-ubyte" in str(error.value)
    assert fragment in str(error.value)


def test_bad_dataset_and_limits_are_config_errors(tmp_path: Path, cache: Path) -> None:
    # Prepare
    source = write_files(tmp_path / "src", synthetic_files(), gz=True)

    # Execute / Assert
    with pytest.raises(
        ConfigError, match="unknown dataset 'cifar': expected one of fashion-mnist, mnist"
    ):
        load_split("cifar", train=True)
    with pytest.raises(ConfigError, match="got 0"):
        load_split("fashion-mnist", train=True, data_dir=source, limit=0)
    with pytest.raises(ConfigError, match="limit 13 exceeds the 12 fashion-mnist train samples"):
        load_split("fashion-mnist", train=True, data_dir=source, limit=13)
    with pytest.raises(ConfigError, match="index 3 out of range for 3"):
        load_partition(Partitioning("fashion-mnist", "iid", 3, 0), 3, data_dir=source)


@needs_debian
def test_real_fashion_mnist_shapes_labels_and_normalization() -> None:
    # Execute
    small = load_split("fashion-mnist", train=True, data_dir=DEBIAN, limit=512)
    full = load_split("fashion-mnist", train=True, data_dir=DEBIAN)
    test = load_split("fashion-mnist", train=False, data_dir=DEBIAN)

    # Assert
    assert small.x.shape == (512, 1, 28, 28) and small.x.dtype == torch.float32
    assert small.y.shape == (512,) and small.y.dtype == torch.int64
    assert torch.equal(small.y, full.y[:512])
    assert len(full) == 60_000 and len(test) == 10_000
    assert set(np.unique(full.y.numpy()).tolist()) == set(range(10))
    assert abs(full.x.mean().item()) < 1e-3 and abs(full.x.std().item() - 1) < 1e-3
    again = load_split("fashion-mnist", train=True, data_dir=DEBIAN)
    assert again.x.data_ptr() == full.x.data_ptr()  # served from the in-process cache


@needs_debian
@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.5", "shards:2"])
def test_load_partition_equals_coordinator_partitioning(partition: str) -> None:
    # Prepare: what the coordinator of level 2 does.
    split = load_split("fashion-mnist", train=True, data_dir=DEBIAN, limit=2000)
    parts = partition_indices(parse_partition(partition), split.y, 4, seed=11)

    # Execute: what each level-3 worker does for itself.
    mine = [
        load_partition(Partitioning("fashion-mnist", partition, 4, 11, 2000), i, data_dir=DEBIAN)
        for i in range(4)
    ]

    # Assert
    for part, own in zip(parts, mine, strict=True):
        assert torch.equal(own.x, split.x[part]) and torch.equal(own.y, split.y[part])


def test_a_builtin_task_follows_the_data_root_found_now(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$FEDSIM_DATA pointing elsewhere gives the other files' splits and digest, not
    the ones cached for the first root."""
    from fl.task_data import task_split
    from fl.task_fingerprint import data_digest
    from fl.tasks import image_task

    seen = []
    for seed in (1, 2):
        root = write_files(tmp_path / f"data-{seed}", synthetic_files(seed), gz=False)
        monkeypatch.setenv("FEDSIM_DATA", str(root))
        task = image_task("fashion-mnist", "cnn")
        seen.append((data_digest(task), task_split(task, train=True).y.tolist()))
    assert seen[0][0] != seen[1][0] and seen[0][1] != seen[1][1]
