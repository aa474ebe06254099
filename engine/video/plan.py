"""Planning a video input: is it a video, where its result goes, its working shape and frame count.

The job planner (``engine.job``) asks ``is_video`` per input (the name, else the content's first
bytes, so a clip named ``clip.bin`` is still a video) and ``plan_video`` for each video: its
header is probed (``engine.video.probe``), its frames are dreamed at the working size of its
display size (the same resize policy as images, ``engine.sizing``), and its result is an MP4
mirroring the input's relative path: ``clip.mp4`` stays ``clip.mp4``, ``clip.mov`` becomes
``clip.mov.mp4`` (as ``--output-format`` names images), so two inputs never share an output.
"""
from __future__ import annotations

from pathlib import PurePosixPath

from ..config import DreamConfig
from ..device_loop import WorkItem
from ..imageio import IMAGE_EXTENSIONS
from ..inputs import output_path
from ..models import get_spec
from ..octaves import usable_octaves
from ..sizing import working_size
from ..storage import Storage
from .encode import OUTPUT_FORMAT
from .probe import SNIFF_BYTES, is_video_name, probe_video, sniff_video


def is_video(path, storage: Storage) -> bool:
    """A video by its name, or (a name that is neither image nor video) by its first bytes."""
    if is_video_name(path):
        return True
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return False
    try:
        with storage.open_read(path, block_size=SNIFF_BYTES) as fh:
            return sniff_video(fh.read(SNIFF_BYTES))
    except OSError:
        return False


def video_output(out_dir, rel: str):
    """Where a video's result goes (an MP4 beside where ``rel`` mirrors); ValueError if it leaves ``out_dir``."""
    p = PurePosixPath(rel)
    name = p.name if p.suffix.lower() == f".{OUTPUT_FORMAT}" else f"{p.name}.{OUTPUT_FORMAT}"
    target = output_path(out_dir, rel)  # the safety check: never outside the output folder
    return target.with_name(name)


def plan_video(path, rel: str, output, cfg: DreamConfig, storage: Storage) -> WorkItem:
    """The work item of a video (raises VideoLoadError for an unreadable one, ValueError for a too small one)."""
    info = probe_video(path, storage)
    w, h = info.display_size
    hw = working_size(w, h, cfg)
    usable_octaves(hw[0], hw[1], cfg.octaves, cfg.octave_scale, get_spec(cfg.model).min_size)
    start, stop = cfg.frame_range()
    total = info.frames or (round(info.duration * float(info.rate)) if info.duration and info.rate else 0)
    end = total if stop is None else min(stop, total) if total else stop
    return WorkItem(str(path), rel, str(output), hw, kind="video", frames=max(0, end - start))
