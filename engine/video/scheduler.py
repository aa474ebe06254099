"""The video scheduler: frame t of several videos of one working shape dreamed as one batch.

Frames of one video are sequential (frame t starts from dream t-1, ``engine.video.coherence``),
so the batch comes from several videos in lockstep: each group holds up to ``batch_size``
lanes (videos, ``engine.video.lanes``) of one shape, and each round dreams the next frame of
every lane as one batch through the device loop's one queue (``DeviceLoop.queue_pixels``: the
same ``engine.loop`` ascent as images; only the initial image is new). A lane that ends is
encoded on a writer thread and its slot refills from the videos waiting for that shape.

Two independent groups are in flight (ping-pong) on an asynchronous device: group A's frame t
is queued, then group B's frame t-1 is landed (the one wait) and written while the device
runs A, the same two-in-flight idea as the image buckets. On CPU the device work is synchronous,
so one group takes every slot (a bigger batch, nothing to overlap). Decoding and flow run
ahead on the decode threads; the warp runs on the device. Frames larger than one tile window
(``--tile``) step through the tile scheduler's gradients (``tiles``, handed in: no scheduler imports
another). Each landed frame is written atomically, and every few frames (and after a video's last)
the chain state after it, once the frames before it are written (``engine.video.store``): a killed
job resumes after the newest chain state whose frames are all on disk.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..backends.base import is_oom
from ..device_loop import DeviceLoop, WorkItem
from ..loop import dream_steps
from ..pipeline import Window
from ..report import ImageRecord
from ..tiling import needs_tiling
from .assemble import SegmentParts, finish_any
from .coherence import carried, hold, start_from
from .decode import Decoder
from .lanes import FrameSource, Lane, one_thread
from .probe import VideoLoadError, local_copy, probe_video
from .segments import lane_range
from .store import FrameStore, checkpoint_due, save_frame, state_root  # noqa: F401  (state_root: re-exported)

log = logging.getLogger(__name__)


@dataclass
class _Round:
    """One lockstep batch on its way through the device."""
    rows: list  # (lane, Frame)
    out: torch.Tensor | None  # [N,3,H,W] dreamed pixels on the device
    pending: object
    fence: object
    failed: dict  # lane -> reason, for rows that failed alone


def frame_key(rel: str, index: int) -> str:
    """A frame's jitter key: the video's identity and the frame index (``engine.jitter.image_rng``)."""
    return f"{rel}#frame{index}"


class VideoScheduler:
    """Dreams a list of video work items; ``emit`` gets one record per video, ``on_frames(n)`` counts frames."""

    CPU_GROUPS = 1  # groups in flight on a synchronous device (2 elsewhere: ping-pong)

    def __init__(self, loop: DeviceLoop, emit: Callable[[ImageRecord], None],
                 on_frames: Callable[[int], None] | None = None, tiles: Callable | None = None,
                 groups: int | None = None) -> None:
        self.loop, self.emit, self.cfg = loop, emit, loop.cfg
        self.on_frames = on_frames or (lambda n: None)
        self.tiles_factory, self._tiles = tiles, None
        self.groups = groups or (self.CPU_GROUPS if loop.device.type == "cpu" else 2)
        self.flow = self.cfg.video_flow != "none" and self.cfg.video_blend > 0.0

    def run(self, items: list[WorkItem]) -> None:
        self.decode_pool, self.write_pool = self.loop.pools()
        self.finishing = Window(max(2, self.loop.io_threads))  # encodes in flight (records in order)
        self.frame_writes = Window(2 * self.cfg.batch_size + max(1, self.loop.io_threads))
        parts = SegmentParts(items, self.emit, self.cfg, self.loop.storage, self.loop.worker, self.loop.metadata)
        self.emit = parts.emit  # a long video's segments: one record per video (engine.video.assemble)
        by_shape: dict[tuple[int, int], list[WorkItem]] = defaultdict(list)
        for item in parts.to_dream(items, self.write_pool):
            by_shape[tuple(item.hw)].append(item)
        try:
            for hw, videos in sorted(by_shape.items()):
                self._run_shape(hw, deque(sorted(videos, key=lambda i: i.rel)))
        finally:
            while len(self.frame_writes):
                self.frame_writes.pop()
            while len(self.finishing):
                self.emit(self.finishing.pop()[1])
            parts.close()

    # --- lanes ---
    def _open(self, item: WorkItem) -> Lane | None:
        """A lane for ``item``, resumed from its stored state when there is one (None: recorded as failed)."""
        start, stop, root = lane_range(item, self.cfg, self.loop.metadata["param_hash"])  # a segment: its span
        files = contextlib.ExitStack()  # an object-store video is downloaded once, removed when the lane ends
        try:
            local = files.enter_context(local_copy(item.path, self.loop.storage))
            info = probe_video(local)
        except Exception as exc:  # noqa: BLE001 - unreadable, or gone since planning
            files.close()
            reason = str(exc) if isinstance(exc, VideoLoadError) else f"cannot read video: {type(exc).__name__}: {exc}"
            self.emit(ImageRecord(item.path, item.rel, "failed", reason=reason, worker=self.loop.worker))
            return None
        store = FrameStore(root)
        first, chain = store.resume_point(start)
        if chain is not None:
            log.info("%s: resuming at frame %d", item.rel, first)
        h, w = item.hw
        decoder = Decoder(local, None, first - 1 if chain is not None else first, stop, (w, h), info)
        lane = Lane(item, info, store, FrameSource(decoder, self.flow, self.loop.stages), start, first, chain, local=local, files=files)
        lane.request(self.decode_pool)
        return lane

    def _fill(self, groups: list[list[Lane]], waiting: deque, cap: int) -> None:
        """Refill free slots, spreading videos over the groups (the least full first)."""
        while waiting:
            group = min(groups, key=len)
            if len(group) >= cap:
                return
            lane = self._open(waiting.popleft())
            if lane is not None:
                group.append(lane)

    def _close_ready(self) -> None:
        for lane in [ln for ln in self._closing if ln.inflight == 0]:
            self._closing.remove(lane)
            lane.final_checkpoint(self.write_pool)
            while self.finishing.full():
                self.emit(self.finishing.pop()[1])
            self.finishing.push(self.write_pool.submit(finish_any, lane, self.cfg, self.loop.storage, self.loop.worker,
                                                       self.loop.metadata), lane)
        for _, rec in self.finishing.ready():
            self.emit(rec)

    # --- rounds ---
    def _run_shape(self, hw: tuple[int, int], waiting: deque) -> None:
        cap = max(1, min(self.cfg.batch_size, self.loop.batch_limit.get(hw, self.cfg.batch_size)))
        groups: list[list[Lane]] = [[] for _ in range(self.groups)]
        self._closing: list[Lane] = []
        inflight: _Round | None = None
        while True:
            self._fill(groups, waiting, cap)
            if not any(groups) and inflight is None:
                break
            for group in groups:
                rows = self._gather(group)
                launched = self._launch(rows, hw) if rows else None
                if inflight is not None:  # lands while the device runs what was just queued
                    self._land(inflight)
                inflight = launched
                self._fill(groups, waiting, cap)
        self._close_ready()

    def _gather(self, group: list[Lane]) -> list:
        """(lane, frame, flow) for each lane's next frame; lanes at their end leave the group."""
        rows = []
        for lane in list(group):
            nxt = None if lane.failed else lane.next_frame(self.decode_pool)
            if nxt is not None and lane.skip_first and lane.prev_src is None:  # resumed: restore the chain
                frame, _ = nxt
                lane.prev_src = self._upload(frame.rgb[None])[0]
                lane.prev_dream = torch.from_numpy(lane.chain).to(self.loop.device, self.loop.dtype)
                nxt = lane.next_frame(self.decode_pool)
            if nxt is None:
                group.remove(lane)
                self._closing.append(lane)
                continue
            rows.append((lane, *nxt))
        return rows

    def _upload(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 [N,H,W,3] -> device pixels [N,3,H,W] in [0,1] (uint8 on the wire)."""
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2)  # [N,3,H,W] uint8
        return self.loop.transfer.upload(x.contiguous()).to(self.loop.dtype)

    def _initial(self, rows: list) -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
        """(sources, initial images, both [N,3,H,W] device pixels, and the carried (detail, keep) or None)."""
        src = self._upload(np.stack([f.rgb for _, f, _ in rows]))  # [N,3,H,W]
        carry = [pair is not None and lane.prev_dream is not None and not pair.cut for lane, _, pair in rows]
        for lane, _, pair in rows:
            lane.cuts += int(pair is not None and pair.cut)
        if not any(carry):
            return src, src, None
        dev, h, w = src.device, src.shape[-2], src.shape[-1]
        zero_flow, none = np.zeros((h, w, 2), np.float32), np.zeros((h, w), bool)
        flow = torch.from_numpy(np.stack([p.flow if c else zero_flow for (_, _, p), c in zip(rows, carry)]))
        reliable = torch.from_numpy(np.stack([p.reliable if c else none for (_, _, p), c in zip(rows, carry)]))
        prev_src = torch.stack([ln.prev_src if c else src[i] for i, ((ln, _, _), c) in enumerate(zip(rows, carry))])
        prev_dream = torch.stack([ln.prev_dream if c else src[i] for i, ((ln, _, _), c) in enumerate(zip(rows, carry))])
        for lane, _, pair in (row for row, c in zip(rows, carry) if c):
            lane.carried, lane.reliable = lane.carried + 1, lane.reliable + float(pair.reliable.mean())
        go = torch.tensor(carry, device=dev)
        detail, keep = carried(src, prev_src, prev_dream, flow.to(dev), reliable.to(dev), go)
        return src, start_from(src, detail, keep, self.cfg.video_blend), (detail, keep)

    def _launch(self, rows: list, hw: tuple[int, int]) -> _Round:
        """Queue one lockstep batch (no wait); rows that fail even alone fail their video."""
        t0 = time.perf_counter()
        with one_thread(self.loop.device):
            src, init, held = self._initial(rows)
        keys = [frame_key(lane.item.rel, frame.index) for lane, frame, _ in rows]
        failed: dict = {}
        try:
            out, pending, fence = self._queue(init, keys, hw)
        except Exception as exc:  # noqa: BLE001 - retried row by row: one bad video must not stop the others
            reason, oom = f"{type(exc).__name__}: {exc}", is_oom(exc)
        else:
            reason = None
        if reason is not None:
            out, failed = self._retry_alone(init, keys, hw, rows, reason, oom)
        if reason is not None or held is not None:  # the dreams after the temporal step are what is written
            with one_thread(self.loop.device):
                out = out if held is None else hold(out, src, *held)
            pending, fence = self.loop.transfer.download(out, reuse=False), self.loop.backend.fence()
        for i, (lane, _, _) in enumerate(rows):
            lane.prev_src, lane.prev_dream = src[i], out[i]
            lane.inflight += 1
        self.loop.stages.add("loop", time.perf_counter() - t0, len(rows))
        return _Round([(lane, frame) for lane, frame, _ in rows], out, pending, fence, failed)

    def _queue(self, init: torch.Tensor, keys: list[str], hw: tuple[int, int]) -> tuple:
        if not needs_tiling(hw[0], hw[1], self.cfg.tile, self.cfg.tile_overlap):
            return self.loop.queue_pixels(init, keys, reuse=False)
        if self._tiles is None:
            self._tiles = self.tiles_factory()
        space = self.loop.space
        gens = [dream_steps(space.to_model(init[i:i + 1]), self.cfg, self.loop.dm.spec, [k], space)
                for i, k in enumerate(keys)]
        results = self._tiles.run_steps(gens)
        bad = next((r for r in results if isinstance(r, str)), None)
        if bad is not None:
            raise RuntimeError(bad)
        out = space.to_pixels(torch.cat(results)).clamp(0.0, 1.0)  # [N,3,H,W]
        return out, self.loop.transfer.download(out, reuse=False), self.loop.backend.fence()

    def _retry_alone(self, init, keys, hw, rows, reason: str, oom: bool):
        """After a batch failed: each frame alone; a frame failing alone fails its video (its slot dreams the source)."""
        if oom:
            self.loop.batch_limit[hw] = max(1, init.shape[0] // 2)
        log.warning("video batch of %d failed (%s); retrying frame by frame", init.shape[0], reason)
        outs, failed = [], {}
        for i, (lane, _, _) in enumerate(rows):
            try:
                out, pending, fence = self._queue(init[i:i + 1], keys[i:i + 1], hw)
                self.loop.host_results(pending, fence)
                outs.append(out)
            except Exception as exc:  # noqa: BLE001
                failed[lane] = f"dream failed: {type(exc).__name__}: {exc}"
                outs.append(init[i:i + 1])
        return torch.cat(outs), failed

    def _land(self, r: _Round) -> None:
        """Wait for a round, hand its frames (and the chain states due) to the writers, count progress, close
        ended lanes."""
        t0 = time.perf_counter()
        host = self.loop.host_results(r.pending, r.fence)  # uint8 [3,H,W] each
        self.loop.stages.add("device_wait", time.perf_counter() - t0, len(r.rows))
        done = 0
        for i, (lane, frame) in enumerate(r.rows):
            lane.inflight -= 1
            if lane in r.failed:
                lane.failed = lane.failed or r.failed[lane]
            if lane.failed:
                continue
            while self.frame_writes.full():
                self.frame_writes.pop()
            chain, before = None, ()
            if checkpoint_due(frame.index):  # the chain state after this frame [3,H,W], exact, once its frames are written
                chain, before = r.out[i].detach().to("cpu", torch.float32).numpy(), list(lane.writes)
                lane.checkpointed = frame.index
            rgb = host[i].permute(1, 2, 0).numpy()  # [H,W,3] uint8
            fut = self.write_pool.submit(save_frame, lane.store, frame, rgb, chain, before, self.loop.stages)
            self.frame_writes.push(fut)
            lane.last_index = frame.index
            lane.writes = [f for f in lane.writes if not f.done() or f.result()] + [fut]
            lane.dreamed += 1
            done += 1
        r.out = None
        self.on_frames(done)
        for _ in self.frame_writes.ready():  # drop finished writes (their errors are in lane.writes)
            pass
        self._close_ready()
