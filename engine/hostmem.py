"""Host memory knobs for large CPU tensors: transparent huge pages and glibc's mmap threshold.

A CPU dream allocates and frees gigabytes of activations per step. Two process-wide settings
decide what that costs:

- :func:`enable_huge_pages` asks PyTorch's CPU allocator for transparent huge pages
  (``THP_MEM_ALLOC_ENABLE=1``: buffers of 2 MiB and more are ``madvise(MADV_HUGEPAGE)``'d), so
  a fresh buffer is faulted in 2 MiB at a time instead of 4 KiB. PyTorch reads the variable
  once, at its first allocation, so it must be set before ``import torch``: the CLI does it
  first thing, and a local Ray started by the CLI passes it to its workers. Measured on the
  2400x1600 tiled benchmark (2 threads): 32-35 s instead of 44-46 s at the same peak RSS
  (0.49x the untiled run); the untiled run of the same photo: 26-28 s either way. Where the kernel's THP mode is ``never``
  it changes nothing; a user's own setting (``THP_MEM_ALLOC_ENABLE=0``) is kept.
- :func:`cache_host_allocations` (an untiled CPU dream, the runner's default) makes glibc keep what
  a step frees: no ``mmap`` per large block, no heap trimming. glibc mmaps every block above its
  mmap threshold (at most 32 MiB) and unmaps it on free, so each step of a batch-8 VGG16 dream at
  256x192 (100 MB activations) faulted ~1 GB in again: 165-340k minor faults and 0.5-0.9 s of system
  time per step (of ~7 CPU s). Kept, the next step reuses the same blocks: 0 faults, 0 s system
  (measured, docs/peer-comparison.md). The heap then holds the job's peak working set, which each
  step touches anyway.
- :func:`bound_host_allocator` makes glibc serve allocations of 2 MiB (8 MiB without huge pages)
  and more by ``mmap`` and trim freed heap above that, so the tile scheduler's peak RSS stays
  bounded (see its docstring). It undoes :func:`cache_host_allocations`.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ["CACHE_ENV", "THP_ENV", "bound_host_allocator", "cache_host_allocations", "enable_huge_pages", "huge_pages_active",
           "share_main_arena"]

log = logging.getLogger(__name__)

CACHE_ENV = "DREAMFLEET_CACHE_HOST_ALLOCATIONS"  # "0": keep glibc's defaults in an untiled CPU dream
THP_ENV = "THP_MEM_ALLOC_ENABLE"  # read by c10's CPU allocator (alloc_cpu.cpp), once per process
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8  # glibc mallopt parameters
_GLIBC_MMAP_MAX = 65536  # glibc's default M_MMAP_MAX


def enable_huge_pages() -> bool:
    """Set ``THP_MEM_ALLOC_ENABLE=1`` unless the user set it; True when it is in effect for this process.

    False when torch was imported before the call (PyTorch has read the variable already) or the
    user turned it off.
    """
    os.environ.setdefault(THP_ENV, "1")
    if "torch" in sys.modules:
        log.debug("%s set after torch was imported: it applies to child processes only", THP_ENV)
        return False
    return os.environ[THP_ENV] == "1"


def huge_pages_active() -> bool:
    """True when PyTorch was asked for huge pages and the kernel's THP mode is not ``never``."""
    if os.environ.get(THP_ENV) != "1":
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def bound_host_allocator(threshold: int | None = None) -> bool:
    """glibc: allocations of ``threshold`` and more by mmap, freed heap trimmed above it. Process-wide.

    ``threshold`` defaults to 2 MiB with huge pages (:func:`huge_pages_active`: faults are cheap, the
    peak is lowest), else 8 MiB.

    glibc's default (mmap from 32 MiB, raised dynamically) keeps a tile batch's freed activations
    in its free lists and the next batches fragment them: the 2400x1600 benchmark's peak RSS grew
    to 3.0 GiB (0.58x untiled). Every mmap'd block costs page faults each time it is touched
    again, though, and a tile batch allocates gigabytes: at 1 MiB the same run took 2.5-3x the
    time of 32 MiB (measured 135 s vs 46 s dream, before huge pages; 8 MiB 87 s at 2.56 GiB,
    16 MiB 66 s at 2.76 GiB). 8 MiB keeps the peak under half the untiled run's; huge pages
    (:func:`enable_huge_pages`) take most of the fault cost away. Returns False where there is
    no glibc (nothing changes).
    """
    if threshold is None:
        threshold = (2 << 20) if huge_pages_active() else (8 << 20)
    return _mallopt((_M_MMAP_MAX, _GLIBC_MMAP_MAX), (_M_MMAP_THRESHOLD, threshold), (_M_TRIM_THRESHOLD, threshold))


def cache_host_allocations() -> bool:
    """glibc: no ``mmap`` for large blocks and no heap trimming, so what a step frees the next step reuses. Process-wide.

    For the untiled CPU dream, whose every step allocates and frees the same activation sizes
    (see the module docstring for the measured page faults it saves). Returns False where there is
    no glibc (nothing changes) or when ``DREAMFLEET_CACHE_HOST_ALLOCATIONS=0`` (glibc's defaults kept);
    :func:`bound_host_allocator` undoes it.
    """
    if os.environ.get(CACHE_ENV, "1") == "0":
        log.info("%s=0: glibc's default allocator settings kept", CACHE_ENV)
        return False
    return _mallopt((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # -1: never trim


def share_main_arena() -> bool:
    """glibc: threads started from now on allocate from the main arena (``M_ARENA_MAX`` 1). Process-wide.

    For CPU lanes (``engine/backends/lanes.py``) under :func:`cache_host_allocations`: a thread's own arena
    lives in 64 MiB mmap'd heaps that glibc unmaps as soon as one is wholly free, whatever the trim
    threshold, so a lane's activations faulted in afresh every step (measured: 30k page faults for 4
    photos against 2.5k without lanes); the main arena's heap is kept. Does nothing (False) when
    ``DREAMFLEET_CACHE_HOST_ALLOCATIONS=0`` or without glibc.
    """
    if os.environ.get(CACHE_ENV, "1") == "0":
        return False
    return _mallopt((_M_ARENA_MAX, 1))


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Apply glibc ``mallopt(param, value)`` pairs in order; True when glibc took them all."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all([bool(libc.mallopt(param, value)) for param, value in settings])
    except (OSError, AttributeError):
        return False
