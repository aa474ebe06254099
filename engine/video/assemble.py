"""A split video's segments: each one's end (a done marker), and the video joined from them and encoded once.

A segment lane ends in ``finish_segment`` (writer thread): its frames are on disk, so a marker
``seg-<first>/done.json`` with its facts is written atomically and a *segment record* (a record whose
``video`` has ``"segment": [start, stop]``) says so. ``assemble`` joins the segments' frames in order and
encodes the video once, as an unsplit lane's ``finish`` does (source pts and durations, audio copied,
written atomically), then drops the frames. It dreams nothing, so a job killed at any point before the
output is in place reruns to the assembly without dreaming again (done segments are reported at once
from their markers); a kill after it leaves the output, which the rerun skips.

``SegmentParts`` is the bookkeeping of one ``VideoScheduler.run``: when every segment of a video is in
that run (``dreamfleet dream``; a ``run`` shard holding them all), the video is assembled there and only
its record comes out. Otherwise each segment record goes out, and the cluster driver queues an assembly
item (``span`` None, ``parts`` n) once every segment reported (``cluster.segments``).
"""
from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path

from ..atomic import atomic_write
from ..report import ImageRecord
from .lanes import finish
from .segments import PLAN_NAME, out_dir_of, segment_root, state_root
from .store import FrameStore

log = logging.getLogger(__name__)

DONE_NAME = "done.json"
_SUMMED = ("frames", "frames_dreamed_now", "cuts", "carried_frames", "decode_flow_s", "bad_packets")


def read_marker(root: Path, span) -> dict | None:
    """A segment's done marker, if it is there and for this span (an earlier plan may have ended it elsewhere)."""
    try:
        marker = json.loads((Path(root) / DONE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return marker if marker.get("segment") == list(span) else None


def segment_record(item, facts: dict, worker: str | None) -> ImageRecord:
    return ImageRecord(item.path, item.rel, "done", shape=list(item.hw), worker=worker, video=facts)


def finish_segment(lane, cfg, storage, worker: str | None, metadata: dict) -> ImageRecord:
    """Writer thread: the end of a segment lane: its marker and segment record (or the failure)."""
    try:
        item = lane.item
        errors = [f.result() for f in lane.writes]
        reason = lane.failed or next((e for e in errors if e), None)
        facts = dict(lane.facts(), segment=list(item.span), part=item.part, parts=item.parts)
        if reason is not None:
            return ImageRecord(item.path, item.rel, "failed", reason=f"segment {item.span}: {reason}",
                               retryable=lane.failed is not None, shape=list(item.hw), worker=worker, video=facts)
        facts["cut_start"] = item.part > 0 and lane.source.flow is not None  # a cut the unsplit chain counts
        facts["reliable_sum"], facts["worker"] = lane.reliable, worker
        facts["wall"] = [time.time() - (time.perf_counter() - lane.t0), time.time()]  # epoch s: the lane's life
        atomic_write(lane.store.root / DONE_NAME, json.dumps(facts).encode(), fsync=True)
        return segment_record(item, facts, worker)
    finally:
        if lane.files is not None:
            lane.files.close()


def finish_any(lane, cfg, storage, worker: str | None, metadata: dict) -> ImageRecord:
    """The end of a lane: a segment's (``finish_segment``) or a whole video's (``lanes.finish``)."""
    return (finish_segment if lane.item.parts else finish)(lane, cfg, storage, worker, metadata)


def _joined_facts(markers: list[dict], spans: list) -> dict:
    facts = dict(markers[0])
    for key in _SUMMED:
        facts[key] = sum(m.get(key) or 0 for m in markers)
    facts["cuts"] += sum(1 for m in markers if m.get("cut_start"))
    facts["decode_flow_s"] = round(facts["decode_flow_s"], 3)
    reliable = sum(m.get("reliable_sum", 0.0) for m in markers)
    facts["reliable_fraction"] = round(reliable / facts["carried_frames"], 4) if facts["carried_frames"] else None
    facts["range"] = [markers[0]["range"][0], markers[-1]["range"][1]]
    facts["truncated"] = next((m["truncated"] for m in markers if m.get("truncated")), None)
    firsts = [m["resumed_at"] if m.get("resumed_at") is not None else m["range"][0] for m in markers
              if m.get("frames_dreamed_now")]  # the first frame each segment dreamed in this run
    resumed = facts["frames_dreamed_now"] < facts["frames"]
    facts["resumed_at"] = (min(firsts) if firsts else facts["range"][0] + facts["frames"]) if resumed else None
    walls = [m["wall"] for m in markers if m.get("frames_dreamed_now") and m.get("wall")]
    seconds = max(w[1] for w in walls) - min(w[0] for w in walls) if walls else 0.0  # segments overlap in time
    facts["frames_per_s"] = round(facts["frames_dreamed_now"] / seconds, 3) if seconds > 0 else None
    facts["segments"] = [list(s) for s in spans]
    facts["segment_workers"] = [m.get("worker") for m in markers]
    for key in ("segment", "part", "cut_start", "reliable_sum", "worker", "wall"):
        facts.pop(key, None)
    return facts


def assemble(item, cfg, storage, worker: str | None, metadata: dict) -> ImageRecord:
    """Join the segments of ``item`` (a split video) and encode it once, atomically; the video's record."""
    from .encode import VideoEncoder
    from .probe import local_copy, probe_video

    t0 = time.perf_counter()
    root = state_root(out_dir_of(item), metadata["param_hash"], item.rel)
    base = dict(shape=list(item.hw), worker=worker)
    try:
        spans = json.loads((root / PLAN_NAME).read_text())["spans"]
    except (OSError, ValueError, KeyError) as exc:
        return ImageRecord(item.path, item.rel, "failed", reason=f"segment plan unreadable: {exc}", retryable=True,
                           **base)
    markers = [read_marker(segment_root(root, a), (a, b)) for a, b in spans]
    missing = [s for s, m in zip(spans, markers) if m is None]
    if missing:
        return ImageRecord(item.path, item.rel, "failed", reason=f"segments {missing} not dreamed yet", retryable=True,
                           **base)
    facts = _joined_facts(markers, spans)
    base["video"] = facts
    frames = []
    for a, b in spans:
        frames += [f for f in FrameStore(segment_root(root, a)).frames() if f[0] >= a and (b is None or f[0] < b)]
    if not frames:
        return ImageRecord(item.path, item.rel, "failed", reason=facts["truncated"] or "no frame could be decoded",
                           **base)
    start, stop = cfg.frame_range()
    h, w = item.hw
    try:
        with local_copy(item.path, storage) as local:
            info = probe_video(local)
            tb = info.time_base
            enc = VideoEncoder(item.output, info, size=(w, h), codec=cfg.video_codec, crf=cfg.crf, storage=storage)
            try:
                for _, pts, duration, path in frames:
                    enc.write(FrameStore.read(path), pts, duration)
                last = frames[-1][1] + (frames[-1][2] or 0)
                span = None if start == 0 and stop is None else (float(frames[0][1] * tb), float(last * tb))
                facts["encoding"] = enc.close(audio_from=local, audio_span=span)
            except BaseException:
                enc.abort()
                raise
    except Exception as exc:  # noqa: BLE001 - disk full, an encoder error: the segments stay for a rerun
        return ImageRecord(item.path, item.rel, "failed", reason=f"cannot write video: {type(exc).__name__}: {exc}",
                           retryable=True, **base)
    facts.update(audio=facts["encoding"].get("audio"), encode_s=round(time.perf_counter() - t0, 3),
                 param_hash=metadata.get("param_hash"), parts=len(spans))
    if not cfg.keep_frames:
        FrameStore(root).remove()
    if facts["truncated"]:
        return ImageRecord(item.path, item.rel, "failed", output=str(item.output),
                           reason=f"truncated video: {facts['truncated']}; the {len(frames)} frames that decode "
                                  "were dreamed", **base)
    return ImageRecord(item.path, item.rel, "done", output=str(item.output), **base)


def _dreamed_before(root: Path, marker: dict) -> dict:
    """A segment a run finds done: its marker says this run dreamed none of its frames (for the joined record)."""
    if marker.get("frames_dreamed_now"):
        marker = dict(marker, frames_dreamed_now=0, resumed_at=marker["range"][0] + marker["frames"])
        atomic_write(Path(root) / DONE_NAME, json.dumps(marker).encode(), fsync=False)
    return marker


class SegmentParts:
    """One scheduler run's split videos: done segments reported from their markers, videos whose segments all
    ran here assembled here (one record each), the others' segment records passed on (see the module doc)."""

    def __init__(self, items: list, emit, cfg, storage, worker: str | None, metadata: dict) -> None:
        self.outer, self.cfg, self.storage, self.worker, self.metadata = emit, cfg, storage, worker, metadata
        self.items: dict[str, object] = {}
        self.here: dict[str, set] = defaultdict(set)  # rel -> parts in this run
        for i in items:
            if i.parts and i.span is not None:
                self.items[i.rel] = i
                self.here[i.rel].add(i.part)
        self.local = {rel for rel, parts in self.here.items() if len(parts) == self.items[rel].parts}
        self.done: dict[str, set] = defaultdict(set)
        self.failed: dict[str, ImageRecord] = {}
        self.outcomes: dict[str, int] = defaultdict(int)
        self.closed: set[str] = set()  # local videos whose one record is out (or being assembled)
        self.assembling: list = []

    def to_dream(self, items: list, pool) -> list:
        """The items that need a lane; done segments are reported now, assembly items assembled."""
        self.pool, out = pool, []
        self._drain()
        for item in items:
            if not item.parts:
                out.append(item)
            elif item.span is None:
                self.assembling.append(self.pool.submit(self._assemble, item))
            elif (m := read_marker(self._root(item), item.span)) is not None:
                self.emit(segment_record(item, _dreamed_before(self._root(item), m), self.worker))
            else:
                out.append(item)
        return out

    def _root(self, item) -> Path:
        return segment_root(state_root(out_dir_of(item), self.metadata["param_hash"], item.rel), item.span[0])

    def _assemble(self, item) -> ImageRecord:
        return assemble(item, self.cfg, self.storage, self.worker, self.metadata)

    def _drain(self) -> None:
        """Emit finished assemblies' records now: progress, report and ledger don't wait for the job's end."""
        running = []
        for fut in self.assembling:
            if fut.done():
                self.outer(fut.result())
            else:
                running.append(fut)
        self.assembling = running

    def emit(self, rec: ImageRecord) -> None:
        self._drain()
        if rec.rel not in self.local or rec.rel in self.closed:
            if rec.rel not in self.closed:
                self.outer(rec)
            return
        seg = (rec.video or {}).get("segment")
        if rec.status == "done" and seg is not None:
            self.done[rec.rel].add(rec.video["part"])
        else:  # a failed segment, or a lane that could not open (an unreadable video)
            self.failed.setdefault(rec.rel, rec)
        self.outcomes[rec.rel] += 1
        if self.outcomes[rec.rel] < len(self.here[rec.rel]):
            return
        self.closed.add(rec.rel)
        if rec.rel in self.failed:  # one record for the video: its first failure, with the parts that are done
            first = self.failed[rec.rel]
            first.video = dict(first.video or {}, parts_done=sorted(self.done[rec.rel]))
            self.outer(first)
        else:
            self.assembling.append(self.pool.submit(self._assemble, self.items[rec.rel]))

    def close(self) -> None:
        """Wait for the assemblies and emit their records (and a failure whose other segments never ended)."""
        for rel, rec in self.failed.items():
            if rel not in self.closed:
                self.closed.add(rel)
                rec.video = dict(rec.video or {}, parts_done=sorted(self.done[rel]))
                self.outer(rec)
        for fut in self.assembling:
            self.outer(fut.result())
        self.assembling = []


__all__ = ["DONE_NAME", "SegmentParts", "assemble", "finish_any", "finish_segment", "read_marker", "segment_record"]
