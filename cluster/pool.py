"""The actor pool: create one Ray actor per worker slot, hand out shards with backpressure, retry.

Each actor is created with ``num_gpus=gpus_per_worker`` (Ray pins its GPU through
``CUDA_VISIBLE_DEVICES``) and ``num_cpus=cpus_per_worker`` (sized to the node by
``cluster.sizing``; the actor's decode and write threads come from it). GPU actors are started
as the alive nodes can hold them (``resources.worker_capacity``), re-checked every few seconds,
so nodes an autoscaler adds mid-job get actors, up to ``workers``. At most ``depth`` shards
are outstanding per actor; ``ray.wait`` collects them as they finish. Fault handling:

* a worker process that dies: the actor is killed and recreated, the shard it was running
  is charged one failure and split in halves, the others queued on it are requeued as is;
  outputs it wrote before dying are kept (atomic writes) and recorded as done, not redone;
* an exception from a shard: split and retried the same way;
* an image the engine recorded as a dream/write failure: retried alone;
* an image that failed more than ``retries`` times on its own is quarantined with its reason;
* a worker silent on a shard for ``shard_timeout`` seconds is treated as dead (hangs are silent);
* an actor that fails to start (its ``__init__`` or ``prepare`` raised, e.g. ``MissingProvider``) is
  retried on its slot; its exception type and message (``cluster.start_errors``) are logged, and
  named in the error when every worker failed to start.

What becomes of a shard's results (records, retries, quarantine) is ``cluster.outcomes``.

Every actor, a recreated one included, runs ``prepare(shapes)`` (compile warm-up, TensorRT
profiles) as its first task after the start probe; shards queue behind it (actor tasks run in
submission order) and the worker re-checks before each shard. A failing prepare counts as a
failed start.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections import deque
from typing import Callable

from dreamfleet.engine.config import DreamConfig
from dreamfleet.engine.report import ImageRecord
from dreamfleet.engine.runner import BackendFactory, WorkItem
from dreamfleet.engine.storage import Storage

from .outcomes import ShardOutcomes
from .resources import alive_node_resources, request_bundles, worker_capacity
from .retry import RetryPolicy
from .segments import SegmentBook
from .slots import (  # noqa: F401  (PoolOptions, NoLiveNode: re-exported for the driver and tests)
    MAX_START_FAILURES,
    NODE_CHECK_SECONDS,
    PREPARE,
    InFlight,
    NoLiveNode,
    PoolOptions,
    PoolStats,
    Slot,
    alive_nodes,
)
from .start_errors import StartErrors, start_error
from .worker import DreamWorker

log = logging.getLogger(__name__)


class WorkerPool(ShardOutcomes):
    """Runs shards on Ray actors until every item has one final record."""

    def __init__(self, cfg: DreamConfig, backend_factory: BackendFactory, opts: PoolOptions,
                 shapes: list[tuple[int, int, int]], started: float | None = None) -> None:
        import ray

        self.ray, self.cfg, self.opts = ray, cfg, opts.validate()
        if opts.gpus_per_worker == 0 and cfg.device == "auto":  # a worker Ray gave no GPU must not take one
            self.cfg = dataclasses.replace(cfg, device="cpu")
        elif opts.gpus_per_worker > 0 and cfg.device.startswith("cuda:"):  # Ray picks the GPU, seen as cuda:0
            log.warning("--device %s ignored: each worker uses the GPU Ray pinned for it", cfg.device)
            self.cfg = dataclasses.replace(cfg, device="cuda")
        self.factory, self.shapes = backend_factory, shapes
        self.storage = Storage.for_config(cfg)  # only to look at outputs' timestamps; the workers move the pixels
        self.started = started if started is not None else time.time()
        self.actor_cls = ray.remote(DreamWorker)
        self.slots = [Slot(i) for i in range(opts.workers)]
        self.stats = PoolStats()
        self.start_errors = StartErrors()  # why actors failed to start: named in the error when none could
        self.inflight: dict[object, InFlight] = {}  # Ray ObjectRef -> what it is
        self.seq = itertools.count()
        self.shard_ids = itertools.count()
        self.first_ready: float | None = None  # perf_counter when the first worker came up
        self.last_progress = time.perf_counter()  # a worker came up or a shard came back
        self.last_grow = 0.0  # perf_counter of the last look for room for more actors

    # ---- actors
    def _start(self, slot: Slot) -> None:
        slot.actor = self.actor_cls.options(num_gpus=self.opts.gpus_per_worker, num_cpus=self.opts.cpus_per_worker,
                                            max_restarts=0, max_task_retries=0).remote(
            self.cfg, self.factory, slot.name, self.opts.torch_threads, self.shapes)
        slot.ready = False
        self.inflight[slot.actor.info.remote()] = InFlight(slot, next(self.seq), None, [])
        self.inflight[slot.actor.prepare.remote(self.shapes)] = InFlight(slot, next(self.seq), PREPARE, [])
        self.stats.workers.setdefault(slot.name, {"shards": 0, "done": 0, "failed": 0, "busy_seconds": 0.0})

    def _kill(self, slot: Slot) -> None:
        try:
            self.ray.kill(slot.actor, no_restart=True)
        except Exception as exc:  # already gone
            log.debug("kill %s: %s", slot.name, exc)

    def close(self) -> None:
        for slot in self.slots:
            if slot.actor is not None:
                self._kill(slot)
                slot.actor = None
        if self.opts.gpus_per_worker > 0:
            request_bundles(self.ray, [])  # withdraw the autoscaler ask made for this job

    def _grow(self) -> None:
        """Start waiting slots while the alive nodes hold more actors (GPU workers; CPU workers start at once)."""
        now = time.perf_counter()
        if all(s.started for s in self.slots) or (self.last_grow and now - self.last_grow < NODE_CHECK_SECONDS):
            return
        self.last_grow = now
        if self.opts.gpus_per_worker > 0:
            room = worker_capacity(alive_node_resources(self.ray), self.opts.gpus_per_worker, self.opts.cpus_per_worker)
        else:
            room = len(self.slots)
        for slot in self.slots:
            if not slot.started and sum(s.started and not s.retired for s in self.slots) < room:
                slot.started = True
                self._start(slot)
                if self.first_ready is not None:
                    log.info("a node joined: starting worker %s (%d of %d)", slot.name, slot.index + 1, len(self.slots))

    # ---- scheduling
    def run(self, shards: list[list[WorkItem]], on_record: Callable[[ImageRecord], None],
            tick: Callable[[], None] | None = None, stop: Callable[[], str | None] | None = None) -> PoolStats:
        """``stop()``: a reason once the job must stop (a persistent write error); queued shards are then
        recorded as not attempted with it and nothing more is dispatched."""
        queue: deque = deque((next(self.shard_ids), s) for s in shards if s)
        self.policy = RetryPolicy(self.opts.retries)
        self.final: set[str] = set()
        self.segments = SegmentBook()  # a long video's segments: its assembly once all are done
        self.on_record, self.queue = on_record, queue
        self._grow()
        self.last_progress = time.perf_counter()
        last_node_check = time.perf_counter()
        while queue or any(not v.is_probe for v in self.inflight.values()):
            if stop is not None and queue and (why := stop()):
                self._drain(why)
                continue
            self._grow()
            self._dispatch()
            if self.inflight:
                ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=1.0)
            elif all(s.started for s in self.slots):
                raise RuntimeError(self.start_errors.all_failed_message())
            else:  # no node holds a worker yet (or any more): wait for one, up to start_timeout
                ready = []
                time.sleep(1.0)
            if tick:
                tick()
            stalled = time.perf_counter() - self.last_progress
            idle = not any(s.ready for s in self.slots)
            if idle and time.perf_counter() - last_node_check >= NODE_CHECK_SECONDS:
                last_node_check = time.perf_counter()
                if alive_nodes(self.ray) == 0:
                    raise NoLiveNode("no Ray node is alive (the local Ray stopped, or the cluster lost every node); "
                                     "finished outputs are kept: rerun the same command to resume")
            if idle and stalled > self.opts.start_timeout:
                raise RuntimeError(f"no worker (re)started within {self.opts.start_timeout:.0f}s; the cluster may lack "
                                   f"the resources asked for ({self.opts.gpus_per_worker} GPU per worker); "
                                   f"cluster has {self.ray.cluster_resources()}"
                                   + (f"; start errors: {self.start_errors.summary()}" if self.start_errors.reasons else ""))
            for ref in ready:
                if ref in self.inflight:
                    self._collect(ref)
            self._check_hung()
        for w in self.stats.workers.values():
            w["images_per_s"] = round(w["done"] / w["busy_seconds"], 4) if w["busy_seconds"] > 0 else None
            w["busy_seconds"] = round(w["busy_seconds"], 3)
        return self.stats

    def _dispatch(self) -> None:
        for slot in self.slots:
            if slot.retired or not slot.started:
                continue
            if slot.actor is None and self.queue:
                self.stats.worker_restarts += 1
                self._start(slot)
            while self.queue and (busy := self._busy(slot)) < self.opts.depth:
                if not busy:
                    slot.active_since = time.perf_counter()
                sid, items = self.queue.popleft()
                self.inflight[slot.actor.process.remote(sid, items)] = InFlight(slot, next(self.seq), sid, items)

    def _busy(self, slot: Slot) -> int:
        return sum(1 for v in self.inflight.values() if v.slot is slot and not v.is_probe)

    def _check_hung(self) -> None:
        now = time.perf_counter()
        for slot in self.slots:
            if (self.opts.shard_timeout and slot.ready and self._busy(slot)
                    and now - slot.active_since > self.opts.shard_timeout):
                self._lost(slot, f"worker {slot.name} hung: no shard back in {self.opts.shard_timeout:.0f}s")

    def _collect(self, ref) -> None:
        call = self.inflight.pop(ref)
        slot, sid, items = call.slot, call.shard_id, call.items
        slot.active_since = time.perf_counter()
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # the shard raised; the actor lives on
            if sid is None:
                self._lost(slot, f"worker {slot.name} failed to start: {self._start_failed(slot, exc)}")
            elif sid == PREPARE:
                slot.ready = False  # a start failure: its queued shards are requeued uncharged
                self._lost(slot, f"worker {slot.name} failed to prepare its backend: {self._start_failed(slot, exc)}")
            else:
                self._shard_failed(items, f"shard raised: {_short(exc)}")
            return
        except self.ray.exceptions.RayError as exc:  # the worker process is gone (or its __init__ raised)
            if sid == PREPARE:
                slot.ready = False  # died while preparing: a start failure, its shards are not charged
            self.inflight[ref] = call  # let _lost account for it with the others
            if not slot.ready:  # never came up: say why (MissingProvider, a missing file, ...)
                self._lost(slot, f"worker {slot.name} failed to start: {self._start_failed(slot, exc)}")
            else:
                self._lost(slot, f"worker {slot.name} lost: {_short(exc)}")
            return
        if sid is None:
            self._ready(slot, result)
        elif sid == PREPARE:
            self.stats.workers[slot.name]["prepare_seconds"] = round(result, 3)
            log.info("worker %s prepared %d shapes in %.1fs", slot.name, len(self.shapes), result)
        else:
            self._shard_done(result, items)

    def _start_failed(self, slot: Slot, exc: BaseException) -> str:
        """Note why ``slot``'s actor did not come up (its exception type and message); returns it."""
        slot.start_error = start_error(exc)
        self.start_errors.add(f"w{slot.index}", slot.start_error)
        return slot.start_error

    def _ready(self, slot: Slot, info: dict) -> None:
        slot.ready, slot.start_failures, slot.start_error = True, 0, ""
        self.last_progress = time.perf_counter()
        self.first_ready = self.first_ready or time.perf_counter()
        self.stats.workers[slot.name].update(info)
        log.info("worker %s up on %s (gpus %s, CUDA_VISIBLE_DEVICES=%s, %s CPUs, %s io threads)", slot.name,
                 info["device"], info["gpu_ids"], info["cuda_visible_devices"], info.get("cpus"), info.get("io_threads"))
        if info["gpu_ids"] and not info["device"].startswith("cuda") and self.cfg.device != "cpu":  # never silent
            log.warning("worker %s was given GPU(s) %s but runs on %s (--device %s, or CUDA is not usable there)",
                        slot.name, info["gpu_ids"], info["device"], self.cfg.device)

    def _lost(self, slot: Slot, reason: str) -> None:
        """The slot's actor died: recreate it; charge the shard it was running, requeue the rest."""
        mine = sorted(((v.seq, r, v) for r, v in self.inflight.items() if v.slot is slot), key=lambda t: t[0])
        for _, r, v in mine:
            del self.inflight[r]
            if v.shard_id is None:  # its start probe may have finished without being collected yet
                try:  # the actor is dead, so this resolves at once: its answer or the death
                    self._ready(slot, self.ray.get(r, timeout=10))
                except Exception as exc:  # the actor never came up
                    log.debug("start probe of %s: %s", slot.name, _short(exc))
        shards = [(v.shard_id, v.items) for _, _, v in mine if not v.is_probe]
        self._kill(slot)
        log.warning("%s (%d shard(s) outstanding)", reason, len(shards))
        if not slot.ready:
            slot.start_failures += 1
            for s in reversed(shards):
                self.queue.appendleft(s)
            if slot.start_failures >= MAX_START_FAILURES:
                slot.retired = True
                log.error("giving up on worker slot %d after %d failed starts: %s", slot.index, slot.start_failures,
                          slot.start_error or "see above")
                return
        else:
            if shards:
                self._shard_failed(shards[0][1], reason)
            for s in reversed(shards[1:]):
                self.queue.appendleft(s)
        slot.actor, slot.generation = None, slot.generation + 1  # restarted by _dispatch when work remains


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    last = text[-1] if text else type(exc).__name__
    return f"{type(exc).__name__}: {last}"[:limit]


__all__ = ["InFlight", "MAX_START_FAILURES", "NODE_CHECK_SECONDS", "NoLiveNode", "PoolOptions", "PoolStats", "Slot",
           "WorkerPool", "alive_nodes"]
