"""The device loop every scheduler stands on: model and backend, queue / land / split-and-retry, host pools.

``DeviceLoop`` owns what the image buckets (``engine.buckets``), the tile scheduler
(``engine.tiled``) and the video scheduler (``engine.video.scheduler``) share, so none of
them imports another: the dream model and backend (built once), the transfers, the one
queue of a batch on the device (upload, every step of ``engine.loop``, the uint8 download,
``Backend.fence``), the one wait per batch (``host_results``), split-and-retry of a failing
batch (one poison image does not take its neighbours down; CUDA out-of-memory also halves
that shape's batch size for the rest of the run), the decode and write thread pools
(``engine.pipeline``) and the atomic ``write_output``. On a multi-core CPU the image buckets'
batches run on CPU lanes (``engine.backends.lanes``: chunks dreamed side by side on threads with
fewer intra-op threads). It never raises for a bad image: a file that can't be read, a batch that
fails in the model, or an output that can't be written becomes a failure record.
``engine.runner.DreamRunner`` is a DeviceLoop that dispatches work items to the three schedulers.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .backends.base import Backend, is_oom
from .backends.eager import loop_dtype, resolve_device
from .backends.lanes import make_lanes, queue_on_lanes
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
from .transfer import HostTransfer
from .version import dreamfleet_version
from .writeguard import WriteGuard, WritesStopped, persistent_cause

log = logging.getLogger(__name__)

BackendFactory = Callable[[DreamModel, DreamConfig, torch.device], Backend]


@dataclass(frozen=True, slots=True)  # slots: a million of them sit in the plan
class WorkItem:
    path: str  # input file
    rel: str  # identity and output mirror path
    output: str  # where the result goes
    hw: tuple[int, int]  # working (H, W)
    kind: str = "image"  # image | video (a video is one unit of work: all its frames on one worker)
    frames: int = 0  # video: frames to dream (progress and ETA); 0 for an image
    span: tuple | None = None  # a video segment: frames [start, stop) (stop None: to the end); None: whole
    part: int = 0  # which segment of a split video (engine.video.segments)
    parts: int = 0  # 0: a whole video (or an image); n >= 2: split into n segments (span None: their assembly)


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


class DeviceLoop:
    """Builds the dream model and backend once; the schedulers queue batches on it and land them."""

    def __init__(self, cfg: DreamConfig, backend_factory: BackendFactory, worker: str | None = None,
                 cpu_budget: int = 0) -> None:
        self.cfg, self.worker = cfg, worker
        self.io_threads = resolve_io_threads(cfg.io_threads, cpu_budget)  # per pool; -1: inline
        self.stages = StageTimes()
        self._pools: tuple | None = None  # (decode, write) executors, made on first use
        # inputs/outputs may be object-store URLs: read/written here; the guard stops a job whose writes keep failing
        self.storage = WriteGuard(Storage.for_config(cfg))
        self.device = resolve_device(cfg.device)
        if self.device.type == "cpu" and not cfg.tile:  # steps reuse freed activations: no page faults (issue 17)
            cache_host_allocations()
        guide = self._load_guide() if cfg.guide else None
        self.dm = build_dream_model_for(cfg, guide)
        self.backend = backend_factory(self.dm, cfg, self.device)
        self.dtype = loop_dtype(cfg.precision)
        # issue 17: on a multi-core CPU, independent batches / chunks dream side by side (engine/backends/lanes.py)
        self.lanes = make_lanes(cfg.cpu_lanes, self.device, self.backend.name,
                                getattr(self.backend, "precision", cfg.precision), cfg.reproducible,
                                self.dm.module.needs_guide)
        self.transfer = HostTransfer(self.device)  # issue 9: pinned uint8 transfers, one sync per batch
        # made once: ImageSpace.create copies host lists to the device, a blocking copy (on CUDA a stream sync
        # that would wait for the batch in flight) if done per batch
        self.space = ImageSpace.create(self.dm.spec, cfg, self.device, self.dtype)
        self.batch_limit: dict[tuple[int, int], int] = {}
        self.metadata = {"dreamfleet": dreamfleet_version(), "param_hash": cfg.param_hash(), "params": cfg.hashed_params(),
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
        if self.lanes is not None:
            self.lanes.close()
            self.lanes = None
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

        Returns (dreamed pixels [N,3,H,W] on the device, transfer.Pending, Backend fence). With CPU lanes the
        batch's chunks queue on the lanes instead (out None; the results come through the pending)."""
        if self.lanes is not None:
            return queue_on_lanes(self.lanes, self.transfer.upload(x).to(self.dtype), keys, self._dream_chunk)
        return self.queue_pixels(self.transfer.upload(x).to(self.dtype), keys)

    def _dream_chunk(self, pixels: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """A lane's work: pixels [n,3,H,W] in [0,1] -> dreamed uint8 [n,3,H,W], as ``queue_pixels`` makes them."""
        return self.transfer.quantize(dream_tensor(self.backend, pixels, self.cfg, self.dm.spec, keys, self.space))

    def queue_pixels(self, pixels: torch.Tensor, keys: list[str], reuse: bool = True) -> tuple:
        """``_queue`` for pixels already on the device [N,3,H,W] in [0,1] (a video's initial frames): every step
        of the one loop (``engine.loop.dream_tensor``), the uint8 download, a fence; nothing waits."""
        out = dream_tensor(self.backend, pixels, self.cfg, self.dm.spec, keys, self.space)  # [N,3,H,W]
        pending = self.transfer.download(out, reuse=reuse)
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
            stamp = self.storage.write_bytes(item.output, data, fsync=True)  # local: temporary + fsync + rename
        except Exception as exc:  # disk full, permissions: persistent (no retry; the guard counts them), or not
            persistent = isinstance(exc, WritesStopped) or persistent_cause(exc) is not None
            return ImageRecord(item.path, item.rel, "failed", reason=f"cannot write output: {exc}",
                               shape=list(item.hw), timings=timings, worker=self.worker, retryable=not persistent)
        t2 = time.perf_counter()
        self.stages.add("encode", t1 - t0)
        self.stages.add("write", t2 - t1)
        timings["save"] = round(t2 - t0, 4)
        return ImageRecord(item.path, item.rel, "done", output=item.output, shape=list(item.hw), timings=timings,
                           worker=self.worker, output_stamp=stamp)

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
