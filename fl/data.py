"""Find, load and partition the image datasets fedsim trains on.

Files are read from torchvision's layout, the four uncompressed idx files
under ``<root>/<Class>/raw/`` (by fedsim's own reader: see ``_read_idx``). Data usually arrives
differently — Debian's ``dataset-fashion-mnist`` ships flat ``.gz`` files, users
point ``--data-dir`` at whatever they have — so :func:`resolve_data_root`
accepts flat (optionally gzipped) files too and extracts them once into a cache
root (``$FEDSIM_CACHE``, default ``~/.cache/fedsim``). Extraction writes a
temporary file and renames it, so concurrent worker processes can race safely.

Splits are loaded once per process into normalized float32 tensors and kept in
an in-process cache, because every level of a run and every virtual worker of
level 3 loads the same files. **The cached tensors are shared: callers must not
mutate** ``Split.x`` / ``Split.y`` in place (``subset`` returns copies).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fl.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "Split",
    "dataset_checksum",
    "forget_loaded_splits",
    "load_split",
    "resolve_data_root",
]

DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist")

# torchvision class name (torchvision reads ``<root>/<class name>/raw/``) and the
# mean/std of the training images in [0, 1], used to normalize to ~N(0, 1).
_CLASS_NAME = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
_MEAN_STD = {"fashion-mnist": (0.2860, 0.3530), "mnist": (0.1307, 0.3081)}
_DEBIAN_DIRS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}
_IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class Split:
    """Images ``x`` (float32, (N, 1, 28, 28), normalized) and labels ``y`` (int64, (N,))."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: torch.Tensor) -> Split:
        """The samples at ``indices`` (copied, so the result owns its memory)."""
        return Split(self.x[indices], self.y[indices])


def _check_dataset(dataset: str) -> None:
    if dataset not in _CLASS_NAME:
        raise ConfigError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")


def _cache_root() -> Path:
    return Path(os.environ.get("FEDSIM_CACHE") or Path.home() / ".cache" / "fedsim")


def _torchvision_layout(directory: Path, dataset: str) -> bool:
    """True if ``directory`` is a root torchvision can read without extraction."""
    raw = directory / _CLASS_NAME[dataset] / "raw"
    return all((raw / name).is_file() for name in _IDX_FILES)


def _flat_sources(directory: Path) -> list[Path] | None:
    """The four idx files found flat in ``directory`` (plain preferred over .gz), or None."""
    found = []
    for name in _IDX_FILES:
        plain, gz = directory / name, directory / f"{name}.gz"
        if plain.is_file():
            found.append(plain)
        elif gz.is_file():
            found.append(gz)
        else:
            return None
    return found


def _extract(sources: list[Path], dataset: str) -> Path:
    """Copy/gunzip ``sources`` into a torchvision-layout cache root and return that root.

    The root's name hashes the sources' paths, sizes and mtimes, so a changed
    source gets a fresh extraction instead of a stale one.
    """
    key = hashlib.sha256()
    for src in sources:
        st = src.stat()
        key.update(f"{src.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    root = _cache_root() / "extracted" / f"{dataset}-{key.hexdigest()[:16]}"
    raw = root / _CLASS_NAME[dataset] / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for src, name in zip(sources, _IDX_FILES, strict=True):
            if not (raw / name).is_file():
                _atomic_copy(src, raw / name)
    except (OSError, EOFError) as exc:  # EOFError: truncated .gz
        raise DataError(f"cannot extract {dataset} into {str(raw)!r}: {exc}") from exc
    return root


def _atomic_copy(src: Path, target: Path) -> None:
    """Copy (gunzipping ``.gz``) ``src`` to ``target`` via a temp file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            if src.suffix == ".gz":
                with gzip.open(src, "rb") as inp:
                    shutil.copyfileobj(inp, out, 1 << 20)
            else:
                with open(src, "rb") as inp:
                    shutil.copyfileobj(inp, out, 1 << 20)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared
        os.replace(tmp, target)  # atomic: readers see the whole file or none
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _local_root(candidate: Path, dataset: str) -> Path | None:
    """A torchvision root for ``candidate`` (or its ``<dataset>/`` subdir), if it holds the data."""
    for directory in (candidate, candidate / dataset):
        if _torchvision_layout(directory, dataset):
            return directory
        for flat_dir in (directory, directory / _CLASS_NAME[dataset] / "raw"):
            sources = _flat_sources(flat_dir)
            if sources is not None:
                return _extract(sources, dataset)
    return None


def _download(dataset: str, root: Path) -> None:
    """Let torchvision fetch the dataset into ``root`` (needs the internet)."""
    import torchvision  # only here: its import is heavy (docs/operations.md, "Data")

    cls = getattr(torchvision.datasets, _CLASS_NAME[dataset])
    cls(str(root), train=True, download=True)


def _readable_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} {str(path)!r} does not exist or is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"{what} {str(path)!r} is not readable")
    return path


def resolve_data_root(dataset: str, data_dir: str | Path | None = None) -> Path:
    """Return a root from which torchvision's class for ``dataset`` reads without downloading.

    Looks, in order, at ``data_dir`` (an explicit choice: if it lacks the files
    that is an error, not a reason to look elsewhere), ``$FEDSIM_DATA``, the
    Debian package's directory, a previous torchvision download in the cache
    root, and finally tries a torchvision download into the cache root (unless
    ``$FEDSIM_OFFLINE`` is set).
    """
    _check_dataset(dataset)
    if data_dir is not None:
        explicit = _readable_dir(Path(data_dir).expanduser(), "data dir")
        root = _local_root(explicit, dataset)
        if root is None:
            raise DataError(
                f"data dir {str(explicit)!r} holds no {dataset} files "
                f"({', '.join(_IDX_FILES)}, optionally .gz)"
            )
        return root
    candidates = []
    env = os.environ.get("FEDSIM_DATA")
    if env:
        candidates.append(_readable_dir(Path(env).expanduser(), "$FEDSIM_DATA"))
    candidates += [_DEBIAN_DIRS[dataset], _cache_root() / "torchvision"]
    for candidate in candidates:
        if candidate.is_dir() and (root := _local_root(candidate, dataset)) is not None:
            return root
    download_root = _cache_root() / "torchvision"
    try:
        if os.environ.get("FEDSIM_OFFLINE"):  # tests and air-gapped sites: never reach out
            raise RuntimeError("FEDSIM_OFFLINE is set")
        _download(dataset, download_root)
    except (OSError, RuntimeError) as exc:
        raise DataError(
            f"{dataset} not found: pass --data-dir, set $FEDSIM_DATA, "
            f"'apt-get install dataset-fashion-mnist' (fashion-mnist), or allow internet "
            f"access for the torchvision download ({type(exc).__name__})"
        ) from exc
    return download_root


@functools.lru_cache(maxsize=8)
def _load_full(root: str, dataset: str, train: bool) -> Split:
    """The whole split, normalized; cached so repeated loads share one copy."""
    raw = Path(root) / _CLASS_NAME[dataset] / "raw"
    prefix = "train" if train else "t10k"
    try:
        images = _read_idx(raw / f"{prefix}-images-idx3-ubyte", ndim=3)
        labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte", ndim=1)
    except OSError as exc:
        raise DataError(f"cannot read {dataset} from {root!r}: {exc}") from exc
    if len(images) != len(labels):
        raise DataError(
            f"cannot read {dataset} from {root!r}: {len(images)} images but {len(labels)} labels"
        )
    mean, std = _MEAN_STD[dataset]
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255.0).sub_(mean).div_(std)
    return Split(x.contiguous(), torch.from_numpy(labels).to(torch.int64))


def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """The uint8 array in an idx file (LeCun's format, as MNIST ships), checked.

    Read here rather than through torchvision's dataset classes, whose import
    alone weighs on every worker process (docs/operations.md, "Data"); the
    format is a 4-byte magic (0, 0, type 0x08 for uint8, number of dimensions),
    big-endian int32 sizes, data.
    """
    data = path.read_bytes()
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes((0, 0, 0x08, ndim)):
        raise DataError(
            f"{str(path)!r} is not an idx file of uint8 with {ndim} dimension(s) "
            f"(it starts with {data[:4].hex() or 'nothing'})"
        )
    shape = struct.unpack(f">{ndim}i", data[4:header])
    if len(data) - header != math.prod(shape):
        raise DataError(
            f"{str(path)!r} declares {'x'.join(map(str, shape))} values but holds "
            f"{len(data) - header} bytes of data"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_split(
    dataset: str,
    *,
    train: bool,
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> Split:
    """Load the train or test split of ``dataset``, keeping the first ``limit`` samples.

    The returned tensors may be views of the in-process cache: do not mutate them.
    """
    root = resolve_data_root(dataset, data_dir)
    full = _load_full(str(root), dataset, train)
    if limit is None:
        return full
    if limit < 1:
        raise ConfigError(f"sample limit must be >= 1, got {limit}")
    if limit > len(full):
        split = "train" if train else "test"
        raise ConfigError(f"sample limit {limit} exceeds the {len(full)} {dataset} {split} samples")
    return Split(full.x[:limit], full.y[:limit])


def forget_loaded_splits() -> None:
    """Drop this process's cached splits (see fl.task_data.forget_loaded_data)."""
    _load_full.cache_clear()


@functools.lru_cache(maxsize=8)
def _checksum(root: str, dataset: str) -> str:
    digest = hashlib.sha256()
    raw = Path(root) / _CLASS_NAME[dataset] / "raw"
    for name in _IDX_FILES:
        digest.update(name.encode() + b"\0")
        with open(raw / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def dataset_checksum(dataset: str, data_dir: str | Path | None = None) -> str:
    """sha256 (hex) over the four uncompressed idx files, in a fixed order.

    Hashing the uncompressed bytes makes the value independent of whether the
    data arrived gzipped, flat or via torchvision, so reports can compare runs.
    """
    root = resolve_data_root(dataset, data_dir)
    return _checksum(str(root), dataset)
