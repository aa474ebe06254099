"""Long videos split at scene cuts: where the cuts are, the segments' spans, and where each segment's state lives.

A video longer than ``--video-split-frames`` frames becomes several work items (``WorkItem.span``,
``part``, ``parts``), each dreamed as its own lane: on other actors in ``dreamfleet run``, as more
lockstep lanes in one process. A segment starts on a scene cut, where the temporal chain restarts
anyway (``engine.video.flow``: a cut carries nothing over), so a video split exactly at cuts dreams
the same frames as unsplit, bit for bit; it is never split mid-shot (no cut in a span: that segment
is longer). With ``--video-flow none`` (or blend 0) every frame is independent and any split is exact:
then the spans are plain N-frame chunks and nothing is scanned.

Finding the cuts cheaply: one pass over the frames decoded small (longest side ``SCAN_SIDE``, the same
DIS cut test), then each split point chosen is confirmed with the chain's own test at the working size
(``is_chain_cut``: frames t-1 and t decoded exactly as the lane decodes them). The plan is kept in the
video's state folder (``segments.json``), so a rerun does not scan again. Each segment's frames and
chain state live in ``<video state>/seg-<first frame>/`` (``engine.video.assemble`` joins them).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

from ..atomic import atomic_write
from ..storage import Storage, location
from .store import state_root

log = logging.getLogger(__name__)

SCAN_SIDE = 160  # the cut scan decodes frames this small (longest side)
PLAN_NAME = "segments.json"


def out_dir_of(item):
    """The job's output folder, from the item's output path and its relative path."""
    out = location(item.output)
    for _ in item.rel.split("/"):
        out = out.parent
    return out


def segment_root(root: Path, start: int) -> Path:
    """The folder of the segment starting at frame ``start`` inside a video's state folder."""
    return Path(root) / f"seg-{start:06d}"


def lane_range(item, cfg, param_hash: str) -> tuple[int, int | None, Path]:
    """(first frame, stop or None, state folder) of a lane: the job's frame range for a whole video, the span
    for a segment (its own state folder)."""
    root = state_root(out_dir_of(item), param_hash, item.rel)
    start, stop = cfg.frame_range()
    if item.span is None:
        return start, stop, root
    a, b = item.span
    return a, (b if b is not None else stop), segment_root(root, a)


def _flow_on(cfg) -> bool:
    return cfg.video_flow != "none" and cfg.video_blend > 0.0


def scan_cuts(local, info, start: int, stop: int | None, hw: tuple[int, int]) -> tuple[list[int], int]:
    """(frames t where a cut starts by the small-frame test, the end of the frames that decode)."""
    from .decode import Decoder
    from .flow import FlowEstimator

    h, w = hw
    k = min(1.0, SCAN_SIDE / max(h, w))
    size = (max(16, round(w * k)), max(16, round(h * k)))
    estimator, prev, cuts, end = FlowEstimator("fast"), None, [], start
    for frame in Decoder(local, None, start, stop, size, info, threads=0):
        if prev is not None and estimator(prev, frame.rgb).cut:
            cuts.append(frame.index)
        prev, end = frame.rgb, frame.index + 1
    return cuts, end


def is_chain_cut(local, info, t: int, hw: tuple[int, int]) -> bool:
    """The chain's own verdict for frame ``t``: frames t-1 and t decoded at the working size, as a lane does."""
    from .decode import Decoder
    from .flow import FlowEstimator
    from .lanes import FLOW_MAX_SIDE

    h, w = hw
    frames = list(Decoder(local, None, t - 1, t + 1, (w, h), info))
    if len(frames) != 2 or frames[0].index != t - 1:
        return False
    return FlowEstimator("fast", FLOW_MAX_SIDE)(frames[0].rgb, frames[1].rgb).cut


def plan_spans(start: int, end: int, n: int, cuts: list[int], confirm) -> list[tuple[int, int | None]]:
    """Spans [a, b) covering start..end, each starting on a confirmed cut, roughly <= ``n`` frames: the latest
    cut within n frames of a segment's start, else the first one after (a shot longer than n stays whole).
    The last span is open-ended (None)."""
    bounds, a, rejected = [start], start, set()
    while end - a > n:
        inside = [c for c in cuts if a < c <= a + n and c not in rejected]
        after = [c for c in cuts if c > a + n and c not in rejected and c < end]
        chosen = None
        for c in list(reversed(inside)) + after:
            if confirm(c):
                chosen = c
                break
            rejected.add(c)
        if chosen is None:
            break
        bounds.append(chosen)
        a = chosen
    return [(x, y) for x, y in zip(bounds, bounds[1:])] + [(bounds[-1], None)]


def split_video(item, info, cfg, storage: Storage):
    """``item`` (a whole video) as is, or its segments when it is longer than ``video_split_frames``."""
    n = cfg.video_split_frames
    if not n or item.frames <= n:
        return item
    try:
        return _split(item, info, cfg, storage, n)
    except Exception as exc:  # noqa: BLE001 - splitting is optional: a failing scan or plan runs the video whole
        log.warning("%s: not split (%s: %s); dreamed whole", item.rel, type(exc).__name__, exc)
        return item


def _split(item, info, cfg, storage: Storage, n: int):
    root = state_root(out_dir_of(item), cfg.param_hash(), item.rel)
    start, stop = cfg.frame_range()
    key = {"source": list(storage.stat(item.path)), "split_frames": n, "range": [start, stop],
           "flow": _flow_on(cfg), "hw": list(item.hw)}
    plan = _read_plan(root)
    if plan is None or plan.get("key") != key:
        if plan is not None and {**plan.get("key", {}), "split_frames": n} != key:  # another source or range:
            for old in Path(root).glob("seg-*"):  # its segments' frames are not this video's
                shutil.rmtree(old, ignore_errors=True)
        plan = dict(key=key, **_make_plan(item, info, cfg, storage, start, stop, n))
        atomic_write(root / PLAN_NAME, json.dumps(plan).encode(), fsync=False)
    spans, end = [tuple(s) for s in plan["spans"]], plan["end"]
    if len(spans) < 2:
        return item
    log.info("%s: %d frames split at scene cuts into %d segments %s", item.rel, end - start, len(spans), spans)
    return [dataclasses.replace(item, frames=(b if b is not None else end) - a, span=(a, b), part=k, parts=len(spans))
            for k, (a, b) in enumerate(spans)]


def _read_plan(root: Path) -> dict | None:
    try:
        return json.loads((Path(root) / PLAN_NAME).read_text())
    except (OSError, ValueError):
        return None


def _make_plan(item, info, cfg, storage: Storage, start: int, stop: int | None, n: int) -> dict:
    """{"spans", "end", "scan_s", "cuts"}: fixed chunks for independent frames, else spans at confirmed cuts."""
    t0 = time.perf_counter()
    if not _flow_on(cfg):  # no chain: any split is exact
        end = start + item.frames
        bounds = list(range(start, end, n))
        return {"spans": [(a, b) for a, b in zip(bounds, bounds[1:])] + [(bounds[-1], None)], "end": end,
                "scan_s": 0.0, "cuts": []}
    from .probe import local_copy

    with local_copy(item.path, storage) as local:
        cuts, end = scan_cuts(local, info, start, stop, item.hw)
        verdicts: dict[int, bool] = {}

        def confirm(t: int) -> bool:
            if t not in verdicts:
                verdicts[t] = is_chain_cut(local, info, t, item.hw)
            return verdicts[t]

        spans = plan_spans(start, end, n, cuts, confirm)
    return {"spans": spans, "end": end, "scan_s": round(time.perf_counter() - t0, 3), "cuts": cuts[:1000]}


__all__ = ["PLAN_NAME", "SCAN_SIDE", "is_chain_cut", "lane_range", "out_dir_of", "plan_spans", "scan_cuts",
           "segment_root", "split_video", "state_root"]
