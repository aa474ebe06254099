"""The per-shard work: ``DreamRunner.process`` dreams a list of work items and writes the results.

It is the one plain function that the in-process job and the Ray workers both call. The
runner is the device loop (``engine.device_loop``: model, backend, queue / land / retry, the
host pools) plus the dispatch of each work item to the scheduler that fits it, all three
standing on that loop and none importing another:

- images that fit the device untiled -> ``engine.buckets`` (same-shape batches, two in flight);
- images larger than one tile window (``--tile``) -> ``engine.tiled`` (tiles of many images share batches);
- videos -> ``engine.video.scheduler`` (frame t of several videos per batch, two groups in flight;
  frames larger than one tile window step through the tile scheduler's gradients).
"""
from __future__ import annotations

from typing import Callable

from .buckets import BucketScheduler
from .config import DreamConfig
from .device_loop import BackendFactory, DeviceLoop, WorkItem
from .report import ImageRecord
from .tiled import TileScheduler
from .tiling import needs_tiling
from .video.scheduler import VideoScheduler
from .writeguard import not_attempted


def split_tiled(items: list[WorkItem], cfg: DreamConfig) -> tuple[list[WorkItem], list[WorkItem]]:
    """(items dreamed as today, items larger than one tile window); the second is empty when tiling is off."""
    tiled = [i for i in items if needs_tiling(i.hw[0], i.hw[1], cfg.tile, cfg.tile_overlap)]
    if not tiled:
        return items, []
    return [i for i in items if not needs_tiling(i.hw[0], i.hw[1], cfg.tile, cfg.tile_overlap)], tiled


class DreamRunner(DeviceLoop):
    """Builds the dream model and backend once; then processes any number of work-item lists."""

    def process(self, items: list[WorkItem], on_record: Callable[[ImageRecord], None] | None = None,
                on_frames: Callable[[int], None] | None = None) -> list[ImageRecord]:
        """Dream ``items``: one record per item, passed to ``on_record`` (nothing accumulates: returns []) or, without
        it, returned as a list. ``on_frames(n)``: n more video frames dreamed (progress). Once the write guard trips
        (a persistent write error, ``engine.writeguard``) nothing more is dreamed: the rest are not attempted."""
        records: list[ImageRecord] = []
        emit = on_record or records.append  # with on_record nothing accumulates (a million-image job)
        videos = [i for i in items if i.kind == "video"]
        images, tiled = split_tiled([i for i in items if i.kind != "video"], self.cfg)  # issue 10: large -> tiles
        if images:
            BucketScheduler(self, emit).run(images)
        seen: set[str] = set()  # tiled images and videos recorded (few: large images, whole videos)

        def emit_seen(rec: ImageRecord) -> None:
            seen.add(rec.rel)
            emit(rec)

        if tiled and not self.storage.cause:  # after the buckets: tiles of these images share fixed-shape batches
            TileScheduler(self, emit_seen).run(tiled)
        if videos and not self.storage.cause:
            VideoScheduler(self, emit_seen, on_frames, tiles=lambda: TileScheduler(self, emit_seen)).run(videos)
        if self.storage.cause:  # a persistent write error stopped the job: what never ran is not attempted
            for item in tiled + videos:
                if item.rel not in seen:  # once per video, also one split into segments
                    seen.add(item.rel)
                    emit(not_attempted(item.path, item.rel, self.storage.reason, self.worker, item.hw))
        return records


__all__ = ["BackendFactory", "DreamRunner", "WorkItem", "split_tiled"]
