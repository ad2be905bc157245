"""Process-wide memory settings for processes that run fedsim (CLI, workers, Dask workers)."""

from __future__ import annotations

import ctypes
import gc

__all__ = ["one_heap", "return_free_memory", "tune_malloc"]

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def _libc() -> ctypes.CDLL | None:
    """glibc, or None elsewhere (musl, macOS): the settings are then left alone."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_malloc() -> bool:
    """Keep freed large blocks in glibc's heap instead of returning them to the kernel.

    Encrypted evaluation allocates and frees tens of MB per tensor many times per
    batch; with glibc's defaults each such block is a fresh mmap whose pages the
    kernel faults in and zeroes again (docs/mpc-and-he.md, "Encrypted
    evaluation"). M_MMAP_THRESHOLD at its 32 MiB maximum and a 1 GiB M_TRIM_THRESHOLD
    let blocks up to 32 MiB be reused — batches of ≤ 250 images keep every
    tensor under that. Process-wide, so the programs (``fedsim run``, ``fedsim worker serve``,
    the benchmarks) set it, not the library. Returns whether glibc took it.
    """
    libc = _libc()
    return (
        libc is not None
        and bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20))
        and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    )


def one_heap() -> bool:
    """Make every thread allocate from glibc's main heap (``M_ARENA_MAX`` = 1).

    A worker decodes requests on a pool of threads, and glibc gives threads
    heaps of their own; what was freed at the top of those is not given back
    by ``return_free_memory`` (``malloc_trim`` trims only the main heap's
    top), so a closed connection's objects could stay resident. A worker
    serves one request at a time, so the threads do not contend for the one
    heap. Call before any thread allocates. Returns whether glibc took it.
    """
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, 1))


def return_free_memory() -> bool:
    """Give the heap's free pages back to the kernel (glibc ``malloc_trim``).

    ``tune_malloc`` keeps up to 1 GiB of freed blocks for reuse; a long-lived
    worker calls this when a connection ends or its data is loaded, so that
    what a finished (or hostile) connection made it allocate does not stay
    resident. Collects garbage first: a closed connection's objects can sit in
    reference cycles until the next automatic collection. Returns whether
    memory was released.
    """
    gc.collect()
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))
