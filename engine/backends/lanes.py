"""CPU lanes: independent dreams on several Python threads at once, each with fewer intra-op threads.

On a multi-core CPU a dream of a small batch gains little from splitting each small convolution
over every core (the OpenMP team meets at a barrier after every op). Lanes run independent work
side by side instead: ``CpuLanes(n, threads)`` is a pool of ``n`` Python threads whose torch ops
each run with ``threads`` intra-op threads (``torch.set_num_threads`` sets the calling thread's
OpenMP team size; the process-wide default is put back once the lanes have started, so threads
made later still get the job's count).

The device loop (``engine.device_loop``) uses them on untiled CPU image buckets only: with two
batches in flight, batch k+1 dreams on one lane while batch k finishes on the other, and a batch
larger than one chunk (``lane_chunks``: a working-set budget of activations, so each chunk stays
cache friendly) is split over the lanes and gathered back in order. Each chunk is dreamed exactly
as a batch of its own (its images' jitter streams come from their keys), so a batch with lanes
equals the same images dreamed chunk by chunk, bit for bit; the intra-op thread count does not
change oneDNN's results (tests/test_cpu_lanes.py).

GPU, tiled and video paths never use lanes; nor do guided objectives (their guide features are
cached on the shared model per shape), ``--reproducible`` (it switches torch's global
deterministic mode per batch), backends other than ``eager``, or half precisions.
"""
from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ..hostmem import share_main_arena
from .base import Fence

log = logging.getLogger(__name__)

LANE_BUDGET_BYTES = 16 << 20  # activations of one chunk: ~16 MB keeps a chunk's working set cache friendly
FIRST_LAYER_CHANNELS = 64  # the widest full-resolution activation of the zoo's models (VGG, GoogLeNet stems)
LANE_PRECISIONS = ("fp32", "fp64")


def auto_lanes(cores: int) -> int:
    """``--cpu-lanes 0``: two lanes on a CPU with two or more cores (each half the cores), else one (off)."""
    return 2 if cores >= 2 else 1


def lanes_apply(device: torch.device, backend: str, precision: str, reproducible: bool, guided: bool) -> str | None:
    """None when lanes can run this job; else why not (logged once)."""
    if device.type != "cpu":
        return f"device {device.type}"
    if backend != "eager":
        return f"backend {backend}"
    if precision not in LANE_PRECISIONS:
        return f"precision {precision}"
    if reproducible:
        return "--reproducible"
    if guided:
        return "a guided objective"
    return None


def make_lanes(setting: int, device: torch.device, backend: str, precision: str, reproducible: bool,
               guided: bool) -> CpuLanes | None:
    """The job's lanes (``--cpu-lanes``: 0 auto, 1 off, N lanes), or None where they do not apply or are off.

    The intra-op threads of the calling thread (``--threads``) are shared out: each lane gets cores // N."""
    cores = torch.get_num_threads()
    n = auto_lanes(cores) if setting == 0 else setting
    if n <= 1:
        return None
    why_not = lanes_apply(device, backend, precision, reproducible, guided)
    if why_not is not None:
        if setting > 1:
            log.info("--cpu-lanes %d ignored: lanes run untiled CPU image batches only, not with %s", setting, why_not)
        return None
    return CpuLanes(n, max(1, cores // n))


def lane_chunks(n: int, h: int, w: int, itemsize: int, lanes: int, budget: int = LANE_BUDGET_BYTES) -> list[int]:
    """Chunk sizes (summing to ``n``) for a batch [n,3,h,w] on ``lanes`` lanes.

    A chunk holds at most ``budget`` bytes of first-layer activations (``FIRST_LAYER_CHANNELS`` x h x w per
    image; at least one image), and the batch is spread over at least ``lanes`` chunks when it has that many
    images, so every lane gets work."""
    per_image = FIRST_LAYER_CHANNELS * h * w * itemsize
    size = max(1, min(budget // max(1, per_image), math.ceil(n / lanes)))
    out = [size] * (n // size)
    return out + [n % size] if n % size else out


class CpuLanes:
    """``n`` worker threads, each running torch ops with ``threads`` intra-op threads; ``submit`` is FIFO."""

    def __init__(self, n: int, threads: int) -> None:
        if n < 1 or threads < 1:
            raise ValueError(f"need n >= 1 lanes of >= 1 threads, got {n} x {threads}")
        self.n, self.threads = n, threads
        default = torch.get_num_threads()
        share_main_arena()  # lanes allocate from the kept main heap; only if no thread made an arena yet (the CLI
        # calls it first thing: glibc fixes its arena limit once 8 arenas exist and reuses exited threads' arenas)
        started = threading.Barrier(n + 1)

        def init() -> None:
            try:
                torch.get_num_threads()  # torch's lazy per-thread init first: it would reset the team size later
                torch.set_num_threads(threads)  # this thread's team; also the process default (put back below)
            finally:
                started.wait()  # also when the above failed: the constructor must not wait forever

        self._pool = ThreadPoolExecutor(n, thread_name_prefix="dreamfleet-lane", initializer=init)
        for _ in range(n):  # a worker starts per submit while fewer than n exist: all n start now
            self._pool.submit(_noop)
        started.wait()
        torch.set_num_threads(default)  # the main thread's team and the default of threads made from now on
        log.info("CPU lanes: %d x %d intra-op threads", n, threads)

    def submit(self, fn, *args) -> Future:
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def describe(self) -> dict:
        return {"cpu_lanes": self.n, "threads_per_lane": self.threads}


class LanePending:
    """A batch split over the lanes: ``wait()`` gathers its chunks' uint8 results, per image [3,H,W], in order
    (the first chunk's exception, if any, is raised: the device loop then splits and retries the batch)."""

    def __init__(self, futures: list[Future]) -> None:
        self.futures = futures

    def wait(self, device_wait=None) -> list[torch.Tensor]:
        return [img for f in self.futures for img in f.result().unbind(0)]


def queue_on_lanes(lanes: CpuLanes, x: torch.Tensor, keys: list[str], dream,
                   budget: int = LANE_BUDGET_BYTES) -> tuple:
    """Queue x[N,3,H,W] (pixels in the loop's dtype) on the lanes in chunks (``lane_chunks``); nothing waits.

    ``dream(x[n,3,H,W], keys[n]) -> uint8 [n,3,H,W]`` runs on a lane per chunk. Returns the device loop's
    (out, pending, fence) with out None: the results come only through ``pending.wait()``."""
    n, _, h, w = x.shape
    futures, start = [], 0
    for size in lane_chunks(n, h, w, x.element_size(), lanes.n, budget):
        futures.append(lanes.submit(dream, x[start:start + size], keys[start:start + size]))
        start += size
    pending = LanePending(futures)
    return None, pending, Fence(lambda: [f.result() for f in futures])


def _noop() -> None:
    """A task that makes the pool start one more worker (its initializer does the work)."""


__all__ = ["LANE_BUDGET_BYTES", "CpuLanes", "LanePending", "auto_lanes", "lane_chunks", "lanes_apply", "make_lanes",
           "queue_on_lanes"]
