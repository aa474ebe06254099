"""One video in flight: its frames decoded (and flowed) ahead on a decode thread, its chain, its encode.

A ``Lane`` is one slot of a lockstep group (``engine.video.scheduler``). Its ``FrameSource``
runs on the device loop's decode threads: it decodes the next frames at the working size and
computes each frame's backward optical flow from the frame before (``engine.video.flow``),
a few frames ahead of the device. The lane keeps the chain on the device (the previous
source and dream, [3,H,W] pixels), counts what it dreamed, and ends by encoding its stored
frames (``engine.video.store``) into the output video on a writer thread (``finish``).
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import islice

import torch

from ..device_loop import WorkItem
from ..report import ImageRecord
from .decode import Decoder, Frame
from .probe import VideoInfo

log = logging.getLogger(__name__)

REQUEST_BYTES = 4 << 20  # a decode request prepares about this many bytes of frames and flow (one per lane out)
AHEAD_MIN, AHEAD_MAX = 4, 32  # frames per request: small frames are decoded in longer runs, large ones 4 at a time
FLOW_MAX_SIDE = 1024  # larger frames (4K through the tile path) get their flow from a copy this size


@contextlib.contextmanager
def one_thread(device: torch.device):
    """Small tensor work on the CPU (upload, warp, temporal step of a lockstep batch: [N,3,H,W] elementwise) with
    one intra-op thread: past 32k elements torch splits each op over its threads, and on a busy machine every such
    split waits for a descheduled thread (measured under load: warp + start + hold 0.4 ms on one thread, 15-90 ms on
    two). Elementwise results do not depend on the thread count, so batching stays exact. The dream keeps all threads."""
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def request_frames(w: int, h: int, flow: bool) -> int:
    """Frames per decode request at W x H: RGB uint8, plus the flow [H,W,2] float32 and mask [H,W] bool."""
    per_frame = w * h * (3 + (9 if flow else 0))
    return max(AHEAD_MIN, min(AHEAD_MAX, REQUEST_BYTES // max(1, per_frame)))


class FrameSource:
    """Decode thread side of a lane: frames at the working size with their backward flow (or None)."""

    def __init__(self, decoder: Decoder, flow: bool, stages=None) -> None:
        from .flow import FlowEstimator

        self.decoder = decoder
        self.flow = FlowEstimator("fast", FLOW_MAX_SIDE) if flow else None  # used by one thread at a time
        self.it = None
        self.prev: Frame | None = None
        self.seconds = 0.0
        self.stages = stages  # engine.pipeline.StageTimes: "decode" and "flow" host time per frame, or None
        w, h = decoder.size or (1920, 1080)
        self.ahead = request_frames(w, h, flow)

    def take(self, k: int | None = None) -> list[tuple[Frame, object]]:
        """The next ``k`` (default ``ahead``) (frame, FlowPair or None) pairs; fewer at the end of the video
        (or where it breaks)."""
        t0 = time.perf_counter()
        if self.it is None:
            self.it = iter(self.decoder)
        out, flow_s = [], 0.0
        try:
            for frame in islice(self.it, k or self.ahead):
                t1 = time.perf_counter()
                pair = self.flow(self.prev.rgb, frame.rgb) if self.flow and self.prev is not None else None
                flow_s += time.perf_counter() - t1
                self.prev = frame
                out.append((frame, pair))
        except Exception as exc:  # noqa: BLE001 - a decoder failure ends the video where it broke
            if not self.decoder.truncated:
                self.decoder.truncated, self.decoder.error = True, f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        if self.stages is not None and out:
            self.stages.add("decode", seconds - flow_s, len(out))
            self.stages.add("flow", flow_s, len(out))
        return out


@dataclass(eq=False)
class Lane:
    """One video in a lockstep slot."""

    item: WorkItem
    info: VideoInfo
    store: object  # FrameStore
    source: FrameSource
    start: int  # first frame of this job's range
    resumed_at: int  # first frame dreamed by this run (> start: resumed)
    chain: object = None  # the stored chain state to resume from, [3,H,W] float32 (numpy), or None
    buffer: deque = field(default_factory=deque)
    pending: Future | None = None  # the decode request in flight
    exhausted: bool = False
    prev_src: torch.Tensor | None = None  # [3,H,W] pixels on the device
    prev_dream: torch.Tensor | None = None  # [3,H,W] pixels on the device
    inflight: int = 0  # batches launched and not landed
    last_index: int | None = None  # the newest frame landed by this run
    checkpointed: int | None = None  # the newest frame a chain state was stored after (this run)
    writes: list = field(default_factory=list)  # frame write futures
    dreamed: int = 0
    cuts: int = 0
    carried: int = 0  # frames that started from the previous frame's detail
    reliable: float = 0.0  # summed reliable fraction of the carried frames
    failed: str | None = None
    local: object = None  # the video as a local file (an object-store video downloaded once)
    files: object = None  # contextlib.ExitStack that removes that download
    t0: float = field(default_factory=time.perf_counter)

    @property
    def skip_first(self) -> bool:
        """Resumed: the first decoded frame is the previous source, not dreamed again."""
        return self.chain is not None

    def request(self, pool) -> None:
        if self.pending is None and not self.exhausted:
            self.pending = pool.submit(self.source.take)

    def next_frame(self, pool) -> tuple[Frame, object] | None:
        """The next (frame, flow) to dream, waiting for the decode thread if needed; None at the end."""
        while not self.buffer and not self.exhausted:
            self.request(pool)
            got, self.pending = self.pending.result(), None
            self.exhausted = not got
            self.buffer.extend(got)
        if len(self.buffer) <= self.source.ahead // 2:
            self.request(pool)  # keep the decode thread one request ahead
        return self.buffer.popleft() if self.buffer else None

    def final_checkpoint(self, pool) -> None:
        """The lane ended: store the chain state after its last frame (unless stored already) on a writer thread,
        after the frame writes, so a job killed before the encode dreams no frame again."""
        from .store import save_chain

        if self.failed or self.last_index is None or self.last_index == self.checkpointed or self.prev_dream is None:
            return
        chain = self.prev_dream.detach().to("cpu", torch.float32).numpy()  # [3,H,W]
        self.writes.append(pool.submit(save_chain, self.store, self.last_index, chain, list(self.writes)))
        self.checkpointed = self.last_index

    def facts(self) -> dict:
        """The record's video facts known before encoding."""
        info, dec = self.info, self.source.decoder
        seconds = time.perf_counter() - self.t0
        return {"frames": self.dreamed + (self.resumed_at - self.start), "frames_dreamed_now": self.dreamed,
                "resumed_at": self.resumed_at if self.resumed_at > self.start else None,
                "range": [self.start, dec.stop], "fps": float(info.rate) if info.rate else None,
                "time_base": str(info.time_base), "source_frames": info.frames, "duration": info.duration,
                "source_codec": info.codec, "rotation": info.rotation, "source_color": info.color,
                "frames_per_s": round(self.dreamed / seconds, 3) if seconds > 0 else None,
                "decode_flow_s": round(self.source.seconds, 3), "cuts": self.cuts,
                "carried_frames": self.carried,
                "reliable_fraction": round(self.reliable / self.carried, 4) if self.carried else None,
                "truncated": dec.error if dec.truncated else None, "bad_packets": dec.bad_packets}


def finish(lane: Lane, cfg, storage, worker: str | None, metadata: dict) -> ImageRecord:
    """Writer thread: wait for the lane's frame writes, encode its stored frames (source timing, audio copied),
    write the video atomically, drop the frames unless ``keep_frames``; the video's record."""
    try:
        return _finish(lane, cfg, storage, worker, metadata)
    finally:
        if lane.files is not None:
            lane.files.close()  # the local copy of an object-store video


def _finish(lane: Lane, cfg, storage, worker: str | None, metadata: dict) -> ImageRecord:
    from .encode import VideoEncoder

    item, t0 = lane.item, time.perf_counter()
    errors = [f.result() for f in lane.writes]
    facts = lane.facts()
    base = dict(shape=list(item.hw), worker=worker, video=facts)
    reason = lane.failed or next((e for e in errors if e), None)
    stop = lane.source.decoder.stop
    frames = [f for f in lane.store.frames() if f[0] >= lane.start and (stop is None or f[0] < stop)]
    if reason is None and not frames:
        reason = lane.source.decoder.error or "no frame could be decoded"
    if reason is not None:
        return ImageRecord(item.path, item.rel, "failed", reason=reason, retryable=lane.failed is not None, **base)
    h, w = item.hw
    tb = lane.info.time_base
    try:
        enc = VideoEncoder(item.output, lane.info, size=(w, h), codec=cfg.video_codec, crf=cfg.crf, storage=storage)
        try:
            for _, pts, duration, path in frames:
                enc.write(lane.store.read(path), pts, duration)
            whole = lane.start == 0 and stop is None  # a frame range keeps the audio playing during its frames
            last = frames[-1][1] + (frames[-1][2] or 0)
            span = None if whole else (float(frames[0][1] * tb), float(last * tb))
            facts["encoding"] = enc.close(audio_from=lane.local, audio_span=span)
        except BaseException:
            enc.abort()
            raise
    except Exception as exc:  # noqa: BLE001 - disk full, an encoder error: frames stay for a rerun
        return ImageRecord(item.path, item.rel, "failed", reason=f"cannot write video: {type(exc).__name__}: {exc}",
                           retryable=True, **base)
    facts["audio"] = facts["encoding"].get("audio")
    facts["encode_s"] = round(time.perf_counter() - t0, 3)
    if lane.source.stages is not None:  # the final encode (reading the stored frames back), per frame
        lane.source.stages.add("encode", time.perf_counter() - t0, len(frames))
    facts["param_hash"] = metadata.get("param_hash")
    if not cfg.keep_frames:
        lane.store.remove()
    dec = lane.source.decoder
    if dec.truncated:  # what decoded is dreamed and written, and the record says the file is cut short
        return ImageRecord(item.path, item.rel, "failed", output=str(item.output),
                           reason=f"truncated video: {dec.error}; the {len(frames)} frames that decode were dreamed",
                           **base)
    return ImageRecord(item.path, item.rel, "done", output=str(item.output), **base)
