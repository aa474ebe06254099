"""The per-shard work: dream a list of work items in same-shape batches and write the results.

``DreamRunner.process`` is the one plain function that the in-process job and the Ray
workers both call. It never raises for a bad image: a file that can't be read, or a batch
that fails in the model, becomes failure records (a failing batch is split in halves and
retried, so one poison image does not take its neighbours down; CUDA out-of-memory also
halves that bucket's batch size for the rest of the run).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .backends.base import Backend
from .backends.eager import loop_dtype, resolve_device
from .build import DreamModel, build_dream_model
from .config import DreamConfig
from .imageio import ImageLoadError, load_image, save_image
from .loop import dream_tensor
from .models import get_spec
from .report import ImageRecord
from .sizing import to_tensor, working_size
from .space import ImageSpace
from .tiled import TileScheduler, split_tiled

log = logging.getLogger(__name__)

BackendFactory = Callable[[DreamModel, DreamConfig, torch.device], Backend]


@dataclass(frozen=True)
class WorkItem:
    path: str  # input file
    rel: str  # identity and output mirror path
    output: str  # where the result goes
    hw: tuple[int, int]  # working (H, W)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class DreamRunner:
    """Builds the dream model and backend once; then processes any number of work-item lists."""

    def __init__(self, cfg: DreamConfig, backend_factory: BackendFactory, worker: str | None = None) -> None:
        self.cfg, self.worker = cfg, worker
        self.device = resolve_device(cfg.device)
        guide = self._load_guide() if cfg.guide else None
        self.dm = build_dream_model(cfg.model, cfg.layer, cfg.objective, cfg.channels, cfg.weights,
                                    cfg.random_weights, guide)
        self.backend = backend_factory(self.dm, cfg, self.device)
        self.dtype = loop_dtype(cfg.precision)
        self.batch_limit: dict[tuple[int, int], int] = {}
        self.metadata = {"dreamfleet": "0.1.0", "param_hash": cfg.param_hash(), "params": cfg.hashed_params(),
                         "weights": self.dm.weights_info}

    def _load_guide(self) -> torch.Tensor:
        """The guide image at its working size, in the model's normalized space: [1,3,H,W]."""
        img = load_image(Path(self.cfg.guide), self.cfg.max_pixels)
        h, w = img.rgb.shape[:2]
        x = to_tensor(img.rgb, working_size(w, h, self.cfg))[None]  # [1,3,H,W] pixels
        space = ImageSpace.create(get_spec(self.cfg.model), self.cfg, torch.device("cpu"), torch.float32)
        return space.to_model(x)

    def prepare(self, shapes: list[tuple[int, int, int]]) -> None:
        self.backend.prepare(shapes)

    def close(self) -> None:
        self.backend.close()

    def _dream(self, x: torch.Tensor, keys: list[str]) -> list[tuple[torch.Tensor | None, str | None]]:
        """x[N,3,H,W] -> per image (result[3,H,W] or None, failure reason); splits failing batches."""
        try:
            out = dream_tensor(self.backend, x.to(self.device, self.dtype), self.cfg, self.dm.spec, keys)
            self.backend.synchronize()
            return [(o.float().cpu(), None) for o in out]
        except Exception as exc:  # a poison image, OOM, a backend error
            reason, oom = f"{type(exc).__name__}: {exc}", is_oom(exc)
        # retried outside the except block: its traceback would keep the failed batch's tensors alive
        if oom and self.device.type == "cuda":
            torch.cuda.empty_cache()
            self.batch_limit[tuple(x.shape[-2:])] = max(1, x.shape[0] // 2)
        if x.shape[0] == 1:
            log.warning("dream failed for %s: %s", keys[0], reason)
            return [(None, f"dream failed: {reason}")]
        half = x.shape[0] // 2
        log.warning("batch of %d failed (%s); retrying as %d + %d", x.shape[0], reason, half, x.shape[0] - half)
        return self._dream(x[:half], keys[:half]) + self._dream(x[half:], keys[half:])

    def _run_batch(self, batch: list[WorkItem], emit: Callable[[ImageRecord], None]) -> None:
        tensors, alphas, ok, load_s = [], [], [], {}
        for item in batch:
            t0 = time.perf_counter()
            try:
                img = load_image(Path(item.path), self.cfg.max_pixels)
            except ImageLoadError as exc:
                emit(ImageRecord(item.path, item.rel, "failed", reason=str(exc), worker=self.worker))
                continue
            tensors.append(to_tensor(img.rgb, item.hw))
            alphas.append(img.alpha)
            ok.append(item)
            load_s[item.rel] = time.perf_counter() - t0
        if not ok:
            return
        t0 = time.perf_counter()
        results = self._dream(torch.stack(tensors), [i.rel for i in ok])  # [N,3,H,W]
        dream_s = (time.perf_counter() - t0) / len(ok)
        for item, alpha, (out, reason) in zip(ok, alphas, results):
            timings = {"load": round(load_s[item.rel], 4), "dream": round(dream_s, 4)}
            if out is None:
                emit(ImageRecord(item.path, item.rel, "failed", reason=reason, shape=list(item.hw), timings=timings,
                                 worker=self.worker, retryable=True))
                continue
            t1 = time.perf_counter()
            try:
                save_image(Path(item.output), out.permute(1, 2, 0).numpy(), alpha, dict(self.metadata, input=item.rel))
            except Exception as exc:  # disk full, permissions
                emit(ImageRecord(item.path, item.rel, "failed", reason=f"cannot write output: {exc}",
                                 shape=list(item.hw), timings=timings, worker=self.worker, retryable=True))
                continue
            timings["save"] = round(time.perf_counter() - t1, 4)
            emit(ImageRecord(item.path, item.rel, "done", output=item.output, shape=list(item.hw), timings=timings,
                             worker=self.worker))

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
        for hw, bucket in sorted(buckets.items()):
            i = 0
            while i < len(bucket):
                size = min(self.cfg.batch_size, self.batch_limit.get(hw, self.cfg.batch_size))
                self._run_batch(bucket[i:i + size], emit)
                i += size
        if tiled:
            TileScheduler(self, emit).run(tiled)
        return records
