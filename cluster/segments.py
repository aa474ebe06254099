"""The run side of long videos split at scene cuts: which segments are done, and when to assemble a video.

The planner (``engine.video.segments``) turns a long video into segment work items (``span``, ``part``,
``parts``) that shard and run like any other item, on whichever actors are free. A worker that ran every
segment of a video assembles it itself; otherwise it returns one *segment record* per segment (its
``video`` has ``"segment"``). ``SegmentBook`` collects those on the driver: when every segment of a video
has reported, it hands the pool one assembly item (``span`` None, ``parts`` n), which a worker turns into
the encoded video and its one record (``engine.video.assemble``). Segment records never reach the report:
it has one record per video.

Object-store outputs keep segment frames in each machine's local temporary folder, so their segments can
only meet on one machine: on a Ray cluster of more than one node they are run whole (``for_cluster``).
A local or shared-filesystem output folder is where every worker writes anyway.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict

from dreamfleet.engine.report import ImageRecord
from dreamfleet.engine.runner import WorkItem
from dreamfleet.engine.storage import is_url

log = logging.getLogger(__name__)


def item_key(item: WorkItem) -> tuple:
    """An item's identity within a shard: its rel, and the first frame of a segment."""
    return item.rel, (item.span[0] if item.span is not None else None)


def segment_of(rec: ImageRecord) -> list | None:
    """[start, stop] of the segment a record is about, or None (an image's or a whole video's record)."""
    return (rec.video or {}).get("segment")


def assembly_item(item: WorkItem) -> WorkItem:
    """The work item that joins and encodes the segments of ``item``'s video."""
    return dataclasses.replace(item, span=None, part=0, frames=0)


def item_for(rec: ImageRecord, items: list[WorkItem]) -> WorkItem | None:
    """The item of ``items`` a failure record is about: its segment, or the video's assembly (None: not here)."""
    seg = segment_of(rec)
    key = (rec.rel, seg[0] if seg else None)
    same = [i for i in items if i.rel == rec.rel]
    exact = next((i for i in same if item_key(i) == key), None)
    if exact is not None:
        return exact
    if not same:
        return None
    return assembly_item(same[0]) if same[0].parts else same[0]


class SegmentBook:
    """Segments reported done per video; an assembly item once all of a video's segments are done."""

    def __init__(self) -> None:
        self.done: dict[str, set] = defaultdict(set)
        self.queued: set[str] = set()

    def note(self, rec: ImageRecord, items: list[WorkItem]) -> tuple[bool, list[WorkItem]]:
        """(the record is a segment's and goes no further, items to queue) for a record from a shard of ``items``."""
        video = rec.video or {}
        seg = segment_of(rec)
        if rec.status == "done" and seg is not None:
            if rec.rel in self.queued:  # reported again (a retried shard): its assembly is already queued
                return True, []
            self.done[rec.rel].add(video["part"])
            return True, self._complete(rec.rel, video["parts"], items)
        if rec.status == "failed" and rec.retryable and "parts_done" in video:
            # a worker held all the segments and one failed: those done stay done, the others run again
            self.done[rec.rel].update(video["parts_done"])
            again = [i for i in items if i.rel == rec.rel and i.span is not None
                     and i.part not in self.done[rec.rel] and (seg is None or i.span[0] != seg[0])]
            return False, again
        return False, []

    def _complete(self, rel: str, parts: int, items: list[WorkItem]) -> list[WorkItem]:
        if len(self.done[rel]) < parts:
            return []
        self.queued.add(rel)
        self.done.pop(rel, None)  # nothing per video is kept once its assembly is queued, but its name
        item = next(i for i in items if i.rel == rel)
        log.info("%s: all %d segments dreamed; queueing its assembly", rel, parts)
        return [assembly_item(item)]


def manifest_items(todo: list[WorkItem]):
    """One item per input (a split video's first segment stands for it) for the manifest."""
    return (i for i in todo if not i.part)


def video_count(todo: list[WorkItem]) -> int:
    """Records the job will get: one per item, one per split video."""
    return sum(1 for i in todo if not i.part)


def for_cluster(todo: list[WorkItem], nodes: int) -> list[WorkItem]:
    """``todo`` as the cluster runs it: an object-store output on more than one node runs videos whole."""
    if nodes <= 1 or not todo or not is_url(str(todo[0].output)) or not any(i.parts for i in todo):
        return todo
    log.info("object-store output on %d nodes: long videos run whole (segment frames are local to a node)", nodes)
    whole: dict[str, int] = defaultdict(int)
    for i in todo:
        if i.parts:
            whole[i.rel] += i.frames
    return [dataclasses.replace(i, span=None, part=0, parts=0, frames=whole[i.rel]) if i.parts else i
            for i in todo if not i.part]


__all__ = ["SegmentBook", "assembly_item", "for_cluster", "item_for", "item_key", "manifest_items", "segment_of",
           "video_count"]
