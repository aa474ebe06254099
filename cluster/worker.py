"""One dream worker: the per-shard function and the Ray actor class that wraps it.

``process_shard`` is the plain per-shard work (it runs in-process without Ray too): it
hands a list of work items to an already built ``DreamRunner`` and returns the records
plus timing. ``DreamWorker`` is the class the pool turns into a Ray actor: it builds the
model and backend once (on the GPU Ray pinned through ``CUDA_VISIBLE_DEVICES``, or on CPU
with a fixed torch thread count) and then processes shards until it is killed.
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


class DreamWorker:
    """Actor body: build once, then ``process`` shards. Created by ``cluster.pool.WorkerPool``."""

    def __init__(self, cfg: DreamConfig, backend_factory: BackendFactory, name: str,
                 torch_threads: int = 1) -> None:
        import torch

        self.name = name
        if not torch.cuda.is_available() and torch_threads > 0:
            torch.set_num_threads(torch_threads)
        t0 = time.perf_counter()
        self.runner = DreamRunner(cfg, backend_factory, worker=name)
        self.build_seconds = time.perf_counter() - t0
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
                "device": str(self.runner.device), "torch_threads": torch.get_num_threads(),
                "build_seconds": round(self.build_seconds, 3), "backend": self.runner.backend.describe()}

    def prepare(self, shapes: list[tuple[int, int, int]]) -> bool:
        if not self.shapes_prepared:
            self.runner.prepare(shapes)
            self.shapes_prepared = True
        return True

    def process(self, shard_id: int, items: list[WorkItem]) -> ShardResult:
        return process_shard(self.runner, shard_id, items, self.name)

    def close(self) -> bool:
        self.runner.close()
        return True
