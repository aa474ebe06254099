"""What a video file is: recognizing one by name or by content, and reading its facts (PyAV).

A file's leading bytes say whether it is a video container (``engine.video.sniff``): a clip named
``.bin`` is still found, and ``probe_video`` refuses a file whose bytes are no video container with
``NotAVideo`` (the planner then plans it as an image, or records that it is neither), before FFmpeg is
asked. ``probe_video`` opens the container and decodes the first frame, so a file that probes is one
that decodes: anything else is a ``VideoLoadError`` whose message is the reason recorded in the report. An object is probed through a
seekable stream (ranged reads of the header, index and first frame); decoding copies it to a local
temporary once (``local_copy``). PyAV is imported lazily.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from ..imageio import ImageLoadError
from ..storage import Storage, location
from .sniff import DEMUXERS, SNIFF_BYTES, describe_head, image_failure, neither_reason, read_head, video_container
from .tonemap import source_color

log = logging.getLogger(__name__)

# names taken as video when listing folders (a hint only: the bytes decide at planning)
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".3gp", ".3g2", ".ts", ".m2ts", ".mts", ".mpg",
                    ".mpeg", ".vob", ".flv", ".mxf", ".y4m", ".nut", ".ogv", ".wmv", ".asf")


class VideoLoadError(ImageLoadError):
    """The file is not a usable video; ``str(err)`` is the reason recorded in the report."""


class NotAVideo(VideoLoadError):
    """The file's leading bytes are no video container (``head``: those bytes, for the planner's next look)."""

    def __init__(self, reason: str, head: bytes = b"") -> None:
        super().__init__(reason)
        self.head = head


def sniff_video(head: bytes) -> bool:
    """True if ``head`` (a file's first bytes) starts like a video container (``sniff.video_container``)."""
    return video_container(head) is not None


def settle_kind(exc: Exception, video: bool, head: bytes | None, path,
                storage: Storage | None) -> tuple[str | None, bytes, str]:
    """After planning ``path`` as a video (``video``) or an image failed with ``exc``: (the kind its bytes say to
    plan it as instead, or None; its leading bytes; the failure reason). ``head`` is given once a re-plan has
    settled the kind, so a file is re-planned at most once."""
    if isinstance(exc, NotAVideo):  # not a video container: an image if Pillow reads it, else neither
        return ("image" if head is None else None), exc.head, neither_reason(exc.head)
    if video or not isinstance(exc, ImageLoadError):
        return None, head or b"", str(exc)
    head = read_head(path, storage) if head is None else head  # one small read, on an image's failure only
    if video_container(head):
        return "video", head, str(exc)
    return None, head, image_failure(str(exc), head)


def is_video_name(p) -> bool:
    return p.suffix.lower() in VIDEO_EXTENSIONS


@dataclass
class VideoInfo:
    width: int  # coded frame size (before the display rotation)
    height: int
    rotation: int  # display rotation in degrees, counter-clockwise, as the container says (0, 90, -90, 180)
    frames: int | None  # frame count from the container header, when it says
    time_base: Fraction  # the video stream's time base: every pts is in these units
    rate: Fraction | None  # average frame rate (None when unknown)
    duration: float | None  # seconds
    codec: str
    pix_fmt: str
    audio: list[dict] = field(default_factory=list)  # per audio stream: index, codec, rate, channels, time_base
    container: str = ""
    start_pts: int = 0  # pts of the first decoded frame
    bit_rate: int | None = None
    duration_from: str = ""  # "stream" | "tag" (stated for the video) | "container" (maybe audio's, or estimated)
    color: dict = field(default_factory=dict)  # the first frame's colour and its conversion (tonemap.source_color)

    @property
    def estimated_frames(self) -> int | None:
        """The header's frame count, else duration x rate (Matroska/WebM list no count): for progress and ETA."""
        if self.frames:
            return self.frames
        if self.duration and self.rate:
            return max(1, round(self.duration * self.rate))
        return None

    @property
    def display_size(self) -> tuple[int, int]:
        """(W, H) as shown: swapped for a quarter-turn rotation."""
        return (self.height, self.width) if abs(self.rotation) % 180 == 90 else (self.width, self.height)


@contextlib.contextmanager
def local_copy(path, storage: Storage | None = None):
    """``path`` as a local Path: a local file as is; an object copied to a temporary (removed afterwards).

    FFmpeg seeks around containers (an MP4's index may sit at the end), so an object is
    streamed to a local temporary once rather than decoded from a network stream.
    """
    path = location(path)
    if isinstance(path, Path):
        yield path
        return
    tmpdir = tempfile.mkdtemp(prefix="dreamfleet-video-")
    local = Path(tmpdir) / (path.name or "video")
    try:
        try:
            with (storage or Storage()).open_read(path) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 4 << 20)
        except OSError as exc:
            raise VideoLoadError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
        yield local
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def open_input(src, head: bytes | None = None):
    """``av.open`` for reading ``src`` (a local Path, or a seekable binary file object), FFmpeg's errors
    turned into VideoLoadError. ``head``: its first bytes if the caller has read them already."""
    import av

    if isinstance(src, Path):
        if not src.exists():
            raise VideoLoadError("no such file")
        if src.stat().st_size == 0:
            raise VideoLoadError("empty file")
    head = _head(src) if head is None else head  # read once
    demuxer = DEMUXERS.get(video_container(head))  # by the bytes: a clip named .jpg is no JPEG to FFmpeg
    try:
        container = av.open(str(src) if isinstance(src, Path) else src, "r", format=demuxer)
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        if head == b"":
            raise VideoLoadError("empty file") from None
        if sniff_video(head):
            raise VideoLoadError(f"a video container FFmpeg cannot open ({why}): broken, or cut short") from None
        raise VideoLoadError(f"not a video FFmpeg can open ({why})") from None
    if video_stream(container) is None:
        container.close()
        raise VideoLoadError("no video stream (not a video FFmpeg can decode)")
    return container


def _head(src) -> bytes:
    """The first bytes of a local file or a seekable stream (left at its start: an object's first block is
    read anyway, so this costs no extra request)."""
    if isinstance(src, Path):
        with open(src, "rb") as fh:
            return fh.read(SNIFF_BYTES)
    src.seek(0)
    head = src.read(SNIFF_BYTES)
    src.seek(0)
    return head


@contextlib.contextmanager
def _probe_source(path, storage: Storage | None):
    """A local Path as is; an object as a seekable stream (ranged reads: probing reads the header, the
    index and the first frame, not the whole object)."""
    path = location(path)
    if isinstance(path, Path):
        yield path
        return
    try:
        fh = (storage or Storage()).open_read(path, 1 << 20)
    except OSError as exc:
        raise VideoLoadError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    with fh:
        yield fh


def video_stream(container):
    """The clip's video stream: FFmpeg's best one, never cover art (an attached picture); None if none."""
    import av

    moving = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not moving:
        return None
    best = container.streams.best("video")
    return best if best in moving else moving[0]


def _audio_facts(container) -> list[dict]:
    return [dict(index=s.index, codec=s.codec_context.name, rate=s.codec_context.sample_rate,
                 channels=s.codec_context.channels, time_base=str(s.time_base),
                 frames=s.frames or None) for s in container.streams.audio]


def _duration(vs, container) -> tuple[float | None, str]:
    """(seconds, where from): the stream's own duration, else its DURATION tag (Matroska), else the
    container's (which may include a longer audio track, or be estimated from the bit rate)."""
    import av

    if vs.duration is not None and vs.duration > 0:
        return float(vs.duration * vs.time_base), "stream"
    tag = vs.metadata.get("DURATION") or vs.metadata.get("duration")
    if tag:
        try:
            h, m, sec = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec), "tag"
        except ValueError:
            pass
    if container.duration is not None:
        return container.duration / av.time_base, "container"
    return None, ""


def probe_video(path, storage: Storage | None = None) -> VideoInfo:
    """Facts about the video at ``path`` (local or URL); decodes its first frame. Raises VideoLoadError
    (``NotAVideo`` when its leading bytes are no video container)."""
    with _probe_source(path, storage) as src:
        if isinstance(src, Path) and not src.exists():
            raise VideoLoadError("no such file")
        head = _head(src)
        if not video_container(head):  # a photo named .mp4, a text file: not FFmpeg's to guess at
            raise NotAVideo(f"not a video container (first bytes {describe_head(head)})" if head else "empty file", head)
        return _probe_open(src, head)


def _probe_open(src, head: bytes) -> VideoInfo:
    import av

    with contextlib.closing(open_input(src, head)) as c:
        vs = video_stream(c)
        try:
            first = next(c.decode(vs), None)
        except av.FFmpegError as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise VideoLoadError(f"cannot decode the first frame ({why}): broken, or cut short") from None
        if first is None:
            raise VideoLoadError("the video stream has no decodable frame")
        duration, duration_from = _duration(vs, c)
        cc = vs.codec_context
        return VideoInfo(
            width=first.width, height=first.height, rotation=int(round(first.rotation or 0)),
            frames=vs.frames or None, time_base=vs.time_base,
            rate=vs.average_rate or vs.guessed_rate or None, duration=duration, codec=cc.name,
            pix_fmt=first.format.name, audio=_audio_facts(c), container=c.format.name,
            start_pts=first.pts or 0, bit_rate=cc.bit_rate or c.bit_rate or None, duration_from=duration_from,
            color=source_color(first))


__all__ = ["SNIFF_BYTES", "VIDEO_EXTENSIONS", "NotAVideo", "VideoInfo", "VideoLoadError", "is_video_name", "local_copy",
           "open_input", "probe_video", "settle_kind", "sniff_video", "video_stream"]
