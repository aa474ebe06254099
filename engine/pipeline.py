"""The host side of the overlapped pipeline: bounded thread pools and per-stage host time.

The runner's device loop hands work to two pools of threads: *decode* (read, DCT-scaled
decode, uint8 resize of the next batches; float conversion happens on the device) and *write* (encode, atomic
write with fsync of finished images). Pillow, numpy's conversions and file I/O release the
GIL, so on a machine with a few cores they run while the device thread steps. Each pool is
bounded twice: a fixed number of threads, and a cap on the futures the runner keeps
outstanding (``Window``), so memory stays flat however many images a job has. Nothing here
busy-waits: the runner blocks only on the oldest future when a window is full.

Thread counts: ``--io-threads N`` (config ``io_threads``), else the CPUs Ray gave the actor,
else the cores this process may run on. ``io_threads = -1`` runs both stages inline on the
device thread (no overlap; used by the benchmark to show what overlap buys).
"""
from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

STAGES = ("decode", "resize", "flow", "loop", "device_wait", "encode", "write")  # flow: video only


def machine_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_io_threads(requested: int, cpu_budget: int = 0) -> int:
    """Threads per pool: ``requested`` if > 0 (or -1: inline), else Ray's CPUs, else the machine's cores."""
    if requested > 0 or requested == -1:
        return requested
    if requested != 0:
        raise ValueError(f"io_threads must be >= 0 (0: automatic) or -1 (inline), got {requested}")
    return cpu_budget if cpu_budget > 0 else machine_cores()


class InlineExecutor:
    """``submit`` runs the call at once on the calling thread (no overlap)."""

    def submit(self, fn: Callable, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # delivered through the future, as a pool would
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait: bool = True) -> None:
        pass


def make_executor(threads: int, name: str):
    return InlineExecutor() if threads == -1 else ThreadPoolExecutor(threads, thread_name_prefix=f"dreamfleet-{name}")


class Window:
    """Futures in submission order, at most ``limit`` outstanding; results come out in order."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.futures: deque = deque()

    def __len__(self) -> int:
        return len(self.futures)

    def full(self) -> bool:
        return len(self.futures) >= self.limit

    def push(self, fut: Future, tag=None) -> None:
        self.futures.append((tag, fut))

    def pop(self):
        """(tag, result) of the oldest future, waiting for it."""
        tag, fut = self.futures.popleft()
        return tag, fut.result()

    def ready(self):
        """(tag, result) for the leading futures that are already done (never waits)."""
        while self.futures and self.futures[0][1].done():
            yield self.pop()


class StageTimes:
    """Host seconds per stage and images counted, summed over threads (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.images = dict.fromkeys(STAGES, 0)

    def add(self, stage: str, seconds: float, images: int = 1) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.images[stage] += images

    def per_image_ms(self) -> dict:
        with self._lock:
            return {s: round(1000.0 * self.seconds[s] / self.images[s], 3) if self.images[s] else None
                    for s in STAGES}

    def reset(self) -> None:
        with self._lock:
            self.seconds = dict.fromkeys(STAGES, 0.0)
            self.images = dict.fromkeys(STAGES, 0)
