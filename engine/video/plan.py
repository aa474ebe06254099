"""Planning a video input: its working shape and frame count, as one work item.

The job planner (``engine.job``) calls ``plan_video`` for each input ``engine.inputs`` found to
be a video: its header is probed (``engine.video.probe``), its frames are dreamed at the working
size of its display size (the same resize policy as images, ``engine.sizing``), and the work
item counts the frames of the job's range (progress and ETA). A video longer than
``video_split_frames`` comes back as its segments, split at scene cuts (``engine.video.segments``).
"""
from __future__ import annotations

from ..config import DreamConfig
from ..device_loop import WorkItem
from ..models import get_spec
from ..octaves import usable_octaves
from ..sizing import working_size
from ..storage import Storage
from .probe import probe_video
from .segments import split_video


def plan_video(path, rel: str, output, cfg: DreamConfig, storage: Storage) -> WorkItem | list[WorkItem]:
    """The work item of a video, or its segments (raises VideoLoadError for an unreadable one, ValueError for a too small one)."""
    info = probe_video(path, storage)
    w, h = info.display_size
    hw = working_size(w, h, cfg)
    usable_octaves(hw[0], hw[1], cfg.octaves, cfg.octave_scale, get_spec(cfg.model).min_size)
    start, stop = cfg.frame_range()
    total = info.frames or (round(info.duration * float(info.rate)) if info.duration and info.rate else 0)
    end = total if stop is None else min(stop, total) if total else stop
    item = WorkItem(str(path), rel, str(output), hw, kind="video", frames=max(0, end - start))
    return split_video(item, info, cfg, storage)
