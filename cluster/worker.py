"""One dream worker: the per-shard function and the Ray actor class that wraps it.

``process_shard`` is the plain per-shard work (it runs in-process without Ray too): it
hands a list of work items to an already built ``DreamRunner`` and returns the records
plus timing. ``DreamWorker`` is the class the pool turns into a Ray actor: it builds the
model and backend once (on the GPU Ray pinned through ``CUDA_VISIBLE_DEVICES``, or on CPU
with a fixed torch thread count), prepares the backend for the job's shapes (the pool calls
``prepare`` right after the start probe; ``process`` re-checks, so no shard ever runs on an
unprepared backend) and then processes shards until it is killed.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

from dreamfleet.engine.config import DreamConfig
from dreamfleet.engine.report import ImageRecord
from dreamfleet.engine.runner import BackendFactory, DreamRunner, WorkItem

log = logging.getLogger(__name__)


@dataclass
class ShardResult:
    shard_id: int
    worker: str
    records: list[ImageRecord] = field(default_factory=list)
    seconds: float = 0.0  # time spent inside the runner for this shard


def process_shard(runner: DreamRunner, shard_id: int, items: list[WorkItem], worker: str) -> ShardResult:
    """Dream ``items`` with ``runner``; the one per-shard function (Ray or not)."""
    t0 = time.perf_counter()
    records = runner.process(items)
    return ShardResult(shard_id, worker, records, time.perf_counter() - t0)


def assigned_cpus() -> float:
    """The CPUs Ray assigned to this actor (``num_cpus``, may be a fraction), or 0.0 outside a Ray actor."""
    try:
        import ray

        if not ray.is_initialized():
            return 0.0
        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
    except Exception:  # not inside Ray
        return 0.0


def ray_cpus() -> int:
    """The actor's thread budget: whole CPUs Ray assigned to it (at least 1), or 0 outside a Ray actor."""
    cpus = assigned_cpus()
    return max(1, round(cpus)) if cpus > 0 else 0


class DreamWorker:
    """Actor body: build once, then ``process`` shards. Created by ``cluster.pool.WorkerPool``."""

    def __init__(self, cfg: DreamConfig, backend_factory: BackendFactory, name: str,
                 torch_threads: int = 1, shapes: list[tuple[int, int, int]] | None = None) -> None:
        import torch

        self.name = name
        if not torch.cuda.is_available() and torch_threads > 0:
            torch.set_num_threads(torch_threads)
        t0 = time.perf_counter()
        self.runner = DreamRunner(cfg, backend_factory, worker=name, cpu_budget=ray_cpus())
        self.build_seconds = time.perf_counter() - t0
        self.shapes = [tuple(s) for s in shapes] if shapes is not None else None
        self.shapes_prepared = False
        log.info("worker %s ready on %s in %.1fs", name, self.runner.device, self.build_seconds)

    def info(self) -> dict:
        """Where this worker runs and what it was given (for pinning checks and the report)."""
        import ray
        import torch

        ctx = ray.get_runtime_context()
        return {"worker": self.name, "pid": os.getpid(), "host": socket.gethostname(), "node_id": ctx.get_node_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "device": str(self.runner.device), "cpus": assigned_cpus(), "torch_threads": torch.get_num_threads(),
                "build_seconds": round(self.build_seconds, 3), "backend": self.runner.backend.describe(),
                "io_threads": self.runner.io_threads,  # per pool; -1: inline on the device thread
                "decode_threads": max(0, self.runner.io_threads), "write_threads": max(0, self.runner.io_threads)}

    def prepare(self, shapes: list[tuple[int, int, int]] | None = None) -> float:
        """``runner.prepare(shapes)`` once (default: the shapes given at construction); returns its seconds."""
        t0 = time.perf_counter()
        if not self.shapes_prepared:
            shapes = [tuple(s) for s in shapes] if shapes is not None else (self.shapes or [])
            self.runner.prepare(shapes)
            self.shapes_prepared = True
            log.info("worker %s prepared %d shapes in %.1fs", self.name, len(shapes), time.perf_counter() - t0)
        return time.perf_counter() - t0

    def process(self, shard_id: int, items: list[WorkItem]) -> ShardResult:
        if not self.shapes_prepared and self.shapes is not None:  # never a shard on an unprepared backend
            self.prepare(self.shapes)
        return process_shard(self.runner, shard_id, items, self.name)

    def close(self) -> bool:
        self.runner.close()
        return True
