"""The per-shard work: dream a list of work items in same-shape batches and write the results.

``DreamRunner.process`` is the one plain function that the in-process job and the Ray
workers both call. It never raises for a bad image: a file that can't be read, a batch
that fails in the model, or an output that can't be written becomes a failure record (a
failing batch is split in halves and retried, so one poison image does not take its
neighbours down; CUDA out-of-memory also halves that bucket's batch size for the rest of
the run).

It is an overlapped pipeline (``engine.pipeline``): decode threads load and resize the
next batches (``load_working_image``), the calling thread only steps the device, and
writer threads encode and write finished images (``write_output``). Both are bounded;
records are emitted on the calling thread, in order, once an image is written. Two batches
are in flight on the device: the host collects and queues batch k+1 (steps, copy to the
host, ``Backend.fence``), then waits on batch k's fence (the one wait per batch) and hands
k's images to the writers, so the device already has k+1 when k finishes.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch

from .backends.base import Backend, is_oom
from .backends.eager import loop_dtype, resolve_device
from .build import DreamModel, build_dream_model_for
from .config import DreamConfig
from .hostmem import cache_host_allocations
from .imageio import ImageLoadError, WorkingImage, encode_image, load_image, load_working_image
from .loop import dream_tensor
from .models import get_spec
from .pipeline import StageTimes, Window, make_executor, resolve_io_threads
from .report import ImageRecord
from .sizing import to_tensor, working_size
from .space import ImageSpace
from .storage import Storage
from .tiled import TileScheduler, split_tiled
from .transfer import HostTransfer

log = logging.getLogger(__name__)

BackendFactory = Callable[[DreamModel, DreamConfig, torch.device], Backend]


@dataclass(frozen=True)
class WorkItem:
    path: str  # input file
    rel: str  # identity and output mirror path
    output: str  # where the result goes
    hw: tuple[int, int]  # working (H, W)


@dataclass
class _Batch:
    """One batch on its way through the device: inputs, then the queued result or the error."""
    items: list[WorkItem]
    alphas: list
    load_s: list[float]
    x: torch.Tensor  # [N,3,H,W] host pixels as decoded: uint8, or float32 in [0, 1]
    out: torch.Tensor | None = None  # [N,3,H,W] on the device
    pending: object = None  # transfer.Pending: the uint8 results on their way to the host
    fence: object = None  # Backend.fence() taken after the steps and the copy to the host
    error: Exception | None = None
    t0: float = 0.0

    @property
    def keys(self) -> list[str]:
        return [i.rel for i in self.items]


class DreamRunner:
    """Builds the dream model and backend once; then processes any number of work-item lists."""

    def __init__(self, cfg: DreamConfig, backend_factory: BackendFactory, worker: str | None = None,
                 cpu_budget: int = 0) -> None:
        self.cfg, self.worker = cfg, worker
        self.io_threads = resolve_io_threads(cfg.io_threads, cpu_budget)  # per pool; -1: inline
        self.stages = StageTimes()
        self._pools: tuple | None = None  # (decode, write) executors, made on first use
        self.storage = Storage.for_config(cfg)  # inputs/outputs may be object-store URLs: read/written here
        self.device = resolve_device(cfg.device)
        if self.device.type == "cpu" and not cfg.tile:  # steps reuse freed activations: no page faults (issue 17)
            cache_host_allocations()
        guide = self._load_guide() if cfg.guide else None
        self.dm = build_dream_model_for(cfg, guide)
        self.backend = backend_factory(self.dm, cfg, self.device)
        self.dtype = loop_dtype(cfg.precision)
        self.transfer = HostTransfer(self.device)  # issue 9: pinned uint8 transfers, one sync per batch
        # made once: ImageSpace.create copies host lists to the device, a blocking copy (on CUDA a stream sync
        # that would wait for the batch in flight) if done per batch
        self.space = ImageSpace.create(self.dm.spec, cfg, self.device, self.dtype)
        self.batch_limit: dict[tuple[int, int], int] = {}
        self.metadata = {"dreamfleet": "0.1.0", "param_hash": cfg.param_hash(), "params": cfg.hashed_params(),
                         "weights": self.dm.weights_info}

    def _load_guide(self) -> torch.Tensor:
        """The guide image at its working size, in the model's normalized space: [1,3,H,W]."""
        img = load_image(self.cfg.guide, self.cfg.max_pixels, self.storage)
        h, w = img.rgb.shape[:2]
        x = to_tensor(img.rgb, working_size(w, h, self.cfg))[None]  # [1,3,H,W] pixels
        space = ImageSpace.create(get_spec(self.cfg.model), self.cfg, torch.device("cpu"), torch.float32)
        return space.to_model(x)

    def prepare(self, shapes: list[tuple[int, int, int]]) -> None:
        if self.cfg.reproducible:  # every step runs one image at a time (engine/reproducible.py)
            shapes = sorted({(1, h, w) for _, h, w in shapes})
        self.backend.prepare(shapes)

    def close(self) -> None:
        if self._pools is not None:
            for pool in self._pools:
                pool.shutdown(wait=True)
            self._pools = None
        self.backend.close()

    def pools(self) -> tuple:
        if self._pools is None:
            self._pools = (make_executor(self.io_threads, "decode"), make_executor(self.io_threads, "write"))
        return self._pools

    def _dream(self, x: torch.Tensor, keys: list[str]) -> list[tuple[torch.Tensor | None, str | None]]:
        """x[N,3,H,W] -> per image (result[3,H,W] or None, failure reason); splits failing batches."""
        try:
            t0 = time.perf_counter()
            _, pending, fence = self._queue(x, keys)
            t1 = time.perf_counter()
            host = self.host_results(pending, fence)  # the one wait on the device per batch
            self.stages.add("loop", t1 - t0, len(keys))
            self.stages.add("device_wait", time.perf_counter() - t1, len(keys))
            return [(o, None) for o in host]
        except Exception as exc:  # a poison image, OOM, a backend error
            reason, oom = f"{type(exc).__name__}: {exc}", is_oom(exc)
        # retried outside the except block: its traceback would keep the failed batch's tensors alive
        return self._split(x, keys, reason, oom)

    def _queue(self, x: torch.Tensor, keys: list[str]) -> tuple:
        """Queue a host batch x[N,3,H,W] on the device without waiting: upload (pinned, uint8 on the wire, /255 on
        the device), every step, the uint8 download (quantized on the device, non-blocking), then a fence.

        Returns (dreamed pixels [N,3,H,W] on the device, transfer.Pending, Backend fence)."""
        out = dream_tensor(self.backend, self.transfer.upload(x).to(self.dtype), self.cfg, self.dm.spec, keys,
                           self.space)
        pending = self.transfer.download(out)
        return out, pending, self.backend.fence()

    def host_results(self, pending, fence) -> list[torch.Tensor]:
        """The batch's one wait: on CUDA the download's event (it follows the compute on the stream), elsewhere
        the backend's fence (a simulated device's clock); per image uint8 [3,H,W], owned by the caller."""
        if self.transfer.cuda:
            return [o.clone() for o in pending.wait()]  # out of the pinned ring: writers may hold it a while
        fence.wait()
        return pending.wait()

    def _split(self, x: torch.Tensor, keys: list[str], reason: str, oom: bool):
        """After ``x`` failed as one batch: halve it and retry (one image: its failure reason)."""
        if oom and self.device.type == "cuda":
            torch.cuda.empty_cache()
            self.batch_limit[tuple(x.shape[-2:])] = max(1, x.shape[0] // 2)
        if x.shape[0] == 1:
            log.warning("dream failed for %s: %s", keys[0], reason)
            return [(None, f"dream failed: {reason}")]
        half = x.shape[0] // 2
        log.warning("batch of %d failed (%s); retrying as %d + %d", x.shape[0], reason, half, x.shape[0] - half)
        return self._dream(x[:half], keys[:half]) + self._dream(x[half:], keys[half:])

    def load_input(self, item: WorkItem) -> WorkingImage | ImageLoadError:
        """Decode thread: ``item`` at its working size, or the reason it can't be read."""
        try:
            img = load_working_image(item.path, item.hw, self.cfg.max_pixels, self.storage)
        except ImageLoadError as exc:
            return exc
        except Exception as exc:  # never let a decode thread take the job down
            return ImageLoadError(f"cannot decode: {type(exc).__name__}: {exc}")
        self.stages.add("decode", img.seconds["decode"])
        self.stages.add("resize", img.seconds["resize"])
        return img

    def write_output(self, item: WorkItem, out: torch.Tensor, alpha, timings: dict) -> ImageRecord:
        """Writer thread: encode ``out`` [3,H,W] and write it atomically (fsync here, off the device thread)."""
        t0 = time.perf_counter()
        try:
            data = encode_image(item.output, out.permute(1, 2, 0).numpy(), alpha, dict(self.metadata, input=item.rel))
            t1 = time.perf_counter()
            self.storage.write_bytes(item.output, data, fsync=True)  # local: temporary + fsync + rename
        except Exception as exc:  # disk full, permissions
            return ImageRecord(item.path, item.rel, "failed", reason=f"cannot write output: {exc}",
                               shape=list(item.hw), timings=timings, worker=self.worker, retryable=True)
        t2 = time.perf_counter()
        self.stages.add("encode", t1 - t0)
        self.stages.add("write", t2 - t1)
        timings["save"] = round(t2 - t0, 4)
        return ImageRecord(item.path, item.rel, "done", output=item.output, shape=list(item.hw), timings=timings,
                           worker=self.worker)

    def _collect(self, batch: list[tuple[WorkItem, object]], emit: Callable[[ImageRecord], None]) -> _Batch | None:
        """Wait for a batch's decodes (in order); record unreadable inputs; stack the rest."""
        tensors, alphas, ok, load_s = [], [], [], []
        for item, fut in batch:
            img = fut.result()
            if isinstance(img, ImageLoadError):
                emit(ImageRecord(item.path, item.rel, "failed", reason=str(img), worker=self.worker))
                continue
            tensors.append(img.data)  # [3,H,W] as decoded: uint8 goes to the device as uint8 (1/4 the bytes)
            alphas.append(img.alpha)
            ok.append(item)
            load_s.append(img.seconds["decode"] + img.seconds["resize"])
        if not ok:
            return None
        if len({t.dtype for t in tensors}) > 1:  # a 16-bit source among 8-bit ones: all as float
            tensors = [t.float().div_(255.0) if t.dtype == torch.uint8 else t for t in tensors]
        return _Batch(ok, alphas, load_s, torch.stack(tensors))  # [N,3,H,W] on the host

    def _launch(self, b: _Batch) -> _Batch:
        """Queue every step of ``b`` and its copy to the host, then a fence; no sync (errors surface in ``_land``)."""
        b.t0 = time.perf_counter()
        try:
            b.out, b.pending, b.fence = self._queue(b.x, b.keys)
        except Exception as exc:  # a poison image, OOM, a backend error: redone with splitting in _land
            b.error = exc
        self.stages.add("loop", time.perf_counter() - b.t0, len(b.items))
        return b

    def _land(self, b: _Batch) -> list[tuple[torch.Tensor | None, str | None]]:
        """Wait for ``b`` on the device and bring its results to the host (split and retry on failure)."""
        if b.error is None:
            try:
                t1 = time.perf_counter()
                host = self.host_results(b.pending, b.fence)  # the next batch is already queued
                self.stages.add("device_wait", time.perf_counter() - t1, len(b.items))
                b.out, b.pending = None, None
                return [(o, None) for o in host]  # uint8 [3,H,W] each
            except Exception as exc:
                b.error = exc
        reason, oom = f"{type(b.error).__name__}: {b.error}", is_oom(b.error)
        b.out, b.error = None, None  # drop the failed attempt (its traceback holds its tensors) before retrying
        return self._split(b.x, b.keys, reason, oom)

    def _queue_writes(self, b: _Batch, results, emit: Callable[[ImageRecord], None], writes: Window) -> None:
        """Hand each dreamed image to a writer thread (blocking only while ``writes`` is full)."""
        dream_s = (time.perf_counter() - b.t0) / len(b.items)
        _, write_pool = self.pools()
        for item, alpha, load_s, (out, reason) in zip(b.items, b.alphas, b.load_s, results):
            timings = {"load": round(load_s, 4), "dream": round(dream_s, 4)}
            if out is None:
                emit(ImageRecord(item.path, item.rel, "failed", reason=reason, shape=list(item.hw), timings=timings,
                                 worker=self.worker, retryable=True))
                continue
            while writes.full():
                emit(writes.pop()[1])
            writes.push(write_pool.submit(self.write_output, item, out, alpha, timings))
        for _, rec in writes.ready():
            emit(rec)

    def process(self, items: list[WorkItem], on_record: Callable[[ImageRecord], None] | None = None) -> list[ImageRecord]:
        """Dream ``items`` bucket by bucket; returns one record per item (also passed to ``on_record``)."""
        records: list[ImageRecord] = []

        def emit(rec: ImageRecord) -> None:
            records.append(rec)
            if on_record:
                on_record(rec)

        items, tiled = split_tiled(items, self.cfg)  # issue 10: larger than one tile window -> tile scheduler
        buckets: dict[tuple[int, int], list[WorkItem]] = defaultdict(list)
        for item in items:
            buckets[tuple(item.hw)].append(item)
        order = [item for _, bucket in sorted(buckets.items()) for item in bucket]
        decode_pool, _ = self.pools()
        lanes = max(1, self.io_threads)
        decoded = Window(3 * self.cfg.batch_size + lanes)  # decode runs up to three batches ahead
        writes = Window(2 * self.cfg.batch_size + lanes)  # finished images waiting for a writer
        submitted, current = 0, None  # current: the batch on the device

        def refill() -> None:
            nonlocal submitted
            while submitted < len(order) and not decoded.full():
                decoded.push(decode_pool.submit(self.load_input, order[submitted]), order[submitted])
                submitted += 1

        try:
            refill()
            while len(decoded):
                hw = tuple(decoded.futures[0][0].hw)
                size = min(self.cfg.batch_size, self.batch_limit.get(hw, self.cfg.batch_size))
                batch = []
                while len(decoded) and len(batch) < size and tuple(decoded.futures[0][0].hw) == hw:
                    batch.append(decoded.futures.popleft())
                    refill()  # keep the decode threads busy while this batch dreams
                nxt = self._collect(batch, emit)  # host work while the device runs ``current``
                if nxt is None:
                    continue
                self._launch(nxt)  # queued behind ``current``: the device never runs dry while we wait
                if current:
                    self._queue_writes(current, self._land(current), emit, writes)
                current = nxt
            if current:
                self._queue_writes(current, self._land(current), emit, writes)
        finally:
            while len(writes):  # every queued write finishes (or fails) and is recorded
                emit(writes.pop()[1])
        if tiled:  # after the buckets: the tile scheduler shares fixed-shape batches across these images
            TileScheduler(self, emit).run(tiled)
        return records
