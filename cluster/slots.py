"""The actor pool's plain records: its options, worker slots, outstanding calls and statistics.

No Ray here: ``cluster.pool.WorkerPool`` keeps these; ``alive_nodes`` only asks the ``ray``
module it is given.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dreamfleet.engine.runner import WorkItem

log = logging.getLogger(__name__)

MAX_START_FAILURES = 3  # consecutive actor start failures before a slot is given up
PREPARE = -1  # the shard-id slot of an actor's prepare task in ``inflight`` (shard ids are >= 0)
NODE_CHECK_SECONDS = 2.0  # while no worker is up, how often to ask Ray whether any node is alive


class NoLiveNode(RuntimeError):
    """Every Ray node is gone: nothing can run; finished outputs are kept and a rerun resumes."""


def alive_nodes(ray) -> int:
    """Alive nodes in the cluster (0 when Ray itself cannot answer)."""
    try:
        return sum(1 for n in ray.nodes() if n.get("Alive"))
    except Exception as exc:  # the GCS is gone too
        log.debug("ray.nodes() failed: %s", exc)
        return 0


@dataclass
class PoolOptions:
    workers: int
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 0.25
    torch_threads: int = 1
    retries: int = 2
    depth: int = 2  # shards outstanding per actor
    start_timeout: float = 300.0  # seconds for the first actor to come up (resources may be missing)
    shard_timeout: float = 1800.0  # a worker silent this long on a shard is killed as hung (0: never)

    def validate(self) -> "PoolOptions":
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker < 0 or (self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker)):
            raise ValueError(f"--gpus-per-worker must be 0, a fraction < 1 or a whole number, got {self.gpus_per_worker}")
        if self.retries < 0 or self.depth < 1 or self.cpus_per_worker <= 0 or self.shard_timeout < 0:
            raise ValueError("--retries and --shard-timeout must be >= 0, depth >= 1 and cpus per worker > 0")
        return self


@dataclass
class Slot:
    index: int
    generation: int = 0
    actor: object = None
    ready: bool = False
    start_failures: int = 0
    start_error: str = ""  # the last start failure's "Type: message" (cluster.start_errors)
    retired: bool = False
    started: bool = False  # an actor was created for it (GPU slots wait until a node can hold one)
    active_since: float = 0.0  # perf_counter of its last sign of life while it has shards

    @property
    def name(self) -> str:
        return f"w{self.index}" if self.generation == 0 else f"w{self.index}.{self.generation}"


@dataclass(frozen=True)
class InFlight:
    """One outstanding Ray call: a shard on a slot's actor, its start probe (``shard_id`` None) or its
    prepare task (``shard_id`` PREPARE)."""

    slot: Slot
    seq: int  # dispatch order
    shard_id: int | None
    items: list[WorkItem]

    @property
    def is_probe(self) -> bool:
        """Not a shard: the start probe or the prepare task."""
        return self.shard_id is None or self.shard_id == PREPARE


@dataclass
class PoolStats:
    workers: dict = field(default_factory=dict)  # name -> info + throughput
    retries: int = 0
    worker_restarts: int = 0
    quarantined: list = field(default_factory=list)


__all__ = ["MAX_START_FAILURES", "NODE_CHECK_SECONDS", "PREPARE", "InFlight", "NoLiveNode", "PoolOptions", "PoolStats", "Slot",
           "alive_nodes"]
