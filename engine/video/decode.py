"""Frames out of a video: upright RGB uint8 with their index, pts and time base, streamed (PyAV).

``Decoder`` yields :class:`Frame` objects in presentation order. ``rgb`` is the frame as
displayed: the container's rotation (a phone clip's display matrix) is applied, so the dream
sees the picture upright; ``VideoEncoder`` turns it back and keeps the metadata. YUV is converted with
the frame's own matrix; an untagged frame gets BT.709 when HD (>= 1280 wide or > 576 high), else BT.601,
as players assume (the output is tagged BT.709, so it looks as the source did); a 10/12-bit, BT.2020 or
HDR (PQ, HLG) frame is converted at 16 bits per channel and mapped to 8-bit SDR BT.709 by
``engine.video.tonemap``. ``size``
(W, H, display orientation) resizes in FFmpeg's scaler (area filter) before the RGB array exists.

``start > 0`` seeks: the packets' pts are read once (no decoding) to rank the frames, then the decoder
starts at the keyframe before frame ``start`` (resuming frame 30000 of a long clip costs one read of
the file, not 30000 decodes); the frames are the same, pixel for pixel, as a decode from the start.

A file cut short (a truncated download, a killed writer) yields every frame that decodes and
then ends: ``Decoder.truncated`` is True and ``Decoder.error`` says why (a demux/decode error, or
fewer frames than the container's header promised). A packet that fails to decode is skipped
and counted (``bad_packets``); FFmpeg conceals the damage in the frames after it.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..storage import Storage
from .probe import VideoInfo, VideoLoadError, local_copy, open_input, probe_video, video_stream
from .tonemap import mapper_for

log = logging.getLogger(__name__)

_UNSPECIFIED = 2  # AVCOL_SPC_UNSPECIFIED
MAX_BAD_PACKETS = 50  # more decode failures than this in one file: give up on it as truncated/corrupt


@dataclass
class Frame:
    index: int  # 0-based position in presentation order
    pts: int  # presentation timestamp in ``time_base`` units (the source's, unchanged)
    time_base: Fraction
    rgb: np.ndarray  # [H, W, 3] uint8, upright (display orientation)
    duration: int | None = None  # how long it shows, in ``time_base`` units, when the container says

    @property
    def time(self) -> float:
        return float(self.pts * self.time_base)


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """The coded picture [H, W, 3] turned as the display matrix says (``rotation``: counter-clockwise degrees)."""
    k = (int(round(rotation / 90)) % 4) if rotation else 0
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def coded(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Inverse of :func:`upright`: back to the orientation the codec stores."""
    k = (int(round(rotation / 90)) % 4) if rotation else 0
    return np.ascontiguousarray(np.rot90(rgb, -k)) if k else rgb


class Decoder:
    """Iterate a video's frames ``start <= index < stop``; after iteration, ``truncated``/``error`` tell how it ended."""

    def __init__(self, path, storage: Storage | None = None, start: int = 0, stop: int | None = None,
                 size: tuple[int, int] | None = None, info: VideoInfo | None = None, threads: int = 1):
        self.path, self.storage = path, storage
        self.start, self.stop, self.size = max(0, start), stop, size
        self.info = info  # probed lazily (on a local copy) when not given
        self.threads = threads
        self.truncated = False
        self.error: str | None = None
        self.bad_packets = 0
        self.decoded = 0  # frames that came out of the decoder (all indices, also those before ``start``)
        self.mapper = None  # a 10/12-bit or HDR source's tonemap.ToneMapper

    def _rgb(self, frame, rotation: int) -> np.ndarray:
        w = h = None
        if self.size is not None:
            w, h = self.size if abs(rotation) % 180 != 90 else self.size[::-1]  # coded orientation
        src_cs = None
        if frame.colorspace == _UNSPECIFIED:  # untagged: guess as players do (mpv, browsers): HD is BT.709
            src_cs = "ITU709" if frame.width >= 1280 or frame.height > 576 else "ITU601"
        self.mapper = mapper_for(frame, self.mapper)  # None: 8-bit SDR, RGB24 as is (unchanged bit for bit)
        out = frame.reformat(width=w, height=h, format="rgb48le" if self.mapper else "rgb24", src_colorspace=src_cs,
                             interpolation="AREA" if w else None)
        rgb = self.mapper(out.to_ndarray()) if self.mapper else out.to_ndarray()  # [H, W, 3] uint16 -> uint8
        return upright(rgb, rotation)  # [H, W, 3] uint8

    def _note_end(self, reason: str) -> None:
        self.truncated, self.error = True, reason
        log.warning("%s: cut short after %d frames: %s", self.path, self.decoded, reason)

    def _frames(self, container, time_base: Fraction) -> Iterator:
        """Decoded av.VideoFrames in presentation order; stops (and notes why) on a demux failure."""
        import av

        vs = video_stream(container)
        packets = container.demux(vs)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as exc:
                self._note_end(f"read error after frame {self.decoded}: {exc}")
                return
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                self.bad_packets += 1
                self.error = f"{self.bad_packets} packet(s) failed to decode; last: {exc}"
                if self.bad_packets > MAX_BAD_PACKETS:
                    self._note_end(self.error)
                    return
                continue
            yield from frames

    def _seek(self, container, vs, local) -> list[int] | None:
        """For ``start > 0``: seek to the keyframe before frame ``start``; the sorted pts of every frame
        (frame index = rank of its pts), or None to decode from the beginning instead.

        The pts come from the packets alone (a read of the file, no decoding), so resuming frame 30000
        of a long clip costs one read, not 30000 decodes.
        """
        import av

        if self.start <= 0:
            return None
        with contextlib.closing(open_input(local)) as scan:
            try:
                ranked = [p.pts for p in scan.demux(video_stream(scan)) if p.size]
            except av.FFmpegError:
                return None
        if not ranked or any(p is None for p in ranked) or len(set(ranked)) != len(ranked):
            return None
        ranked.sort()
        if self.start >= len(ranked):
            return ranked
        try:
            container.seek(ranked[self.start], backward=True, any_frame=False, stream=vs)
        except av.FFmpegError:
            return None
        return ranked

    def __iter__(self) -> Iterator[Frame]:
        with local_copy(self.path, self.storage) as local:
            if self.info is None:
                self.info = probe_video(local)
            for attempt in ("seek", "linear"):
                with contextlib.closing(open_input(local)) as container:
                    vs = video_stream(container)
                    vs.codec_context.thread_count = self.threads
                    if self.threads != 1:
                        vs.codec_context.thread_type = "AUTO"  # frame + slice threads (0: FFmpeg picks the count)
                    ranked = self._seek(container, vs, local) if attempt == "seek" else None
                    if attempt == "seek" and ranked is None:
                        continue  # nothing to skip, or no usable pts: decode from the beginning
                    ok = yield from self._decode(container, vs, ranked)
                    if ok:
                        return

    def _decode(self, container, vs, ranked: list[int] | None):
        """Yield frames from wherever ``container`` is; False if a seek landed after frame ``start``."""
        from bisect import bisect_left

        rotation, tb = self.info.rotation, vs.time_base
        step = int(round(1 / (self.info.rate * tb))) if self.info.rate and tb else 1
        last_pts = last_duration = None
        self.decoded = 0
        for vf in self._frames(container, tb):
            pts = vf.pts if vf.pts is not None else (last_pts + step if last_pts is not None else 0)
            last_pts, last_duration = pts, vf.duration or None
            if ranked is not None:
                index = bisect_left(ranked, pts)
                if self.decoded == 0 and index > self.start:
                    log.info("%s: seek landed after frame %d; decoding from the start", self.path, self.start)
                    return False
            else:
                index = self.decoded
            self.decoded = max(self.decoded, index + 1)
            if index < self.start:
                continue
            if self.stop is not None and index >= self.stop:
                return True
            yield Frame(index, pts, tb, self._rgb(vf, rotation), vf.duration or None)
        if not self.truncated and (self.stop is None or self.decoded < self.stop):
            self._check_complete(last_pts, last_duration, tb)
        return True

    def _check_complete(self, last_pts: int | None, last_duration: int | None, tb: Fraction) -> None:
        """Note a file cut short: an MP4/MOV with fewer frames than its sample table lists, or a Matroska/WebM
        clip (no frame count) whose frames end well before the video duration it states. Other containers
        (MPEG-TS; AVI, whose count includes dropped-frame placeholders) say nothing reliable."""
        bad = f" ({self.bad_packets} packet(s) failed to decode)" if self.bad_packets else ""
        info = self.info
        family = info.container.split(",")[0]
        if family == "mov" and info.frames:
            if self.decoded < info.frames:
                self._note_end(f"decoded {self.decoded} of the {info.frames} frames the header lists{bad}")
            return
        if family != "matroska" or info.duration_from not in ("stream", "tag") or last_pts is None:
            return
        frame = float(last_duration * tb) if last_duration else (float(1 / info.rate) if info.rate else 0.04)
        end = float((last_pts - info.start_pts) * tb) + frame
        if end < info.duration - 1.5 * frame:
            self._note_end(f"decoded {end:.3f} s of the {info.duration:.3f} s the header lists{bad}")


def iter_frames(path, storage: Storage | None = None, start: int = 0, stop: int | None = None,
                size: tuple[int, int] | None = None) -> Iterator[Frame]:
    """Frames ``start <= index < stop`` of ``path`` (see :class:`Decoder` to learn if the file was cut short)."""
    return iter(Decoder(path, storage, start, stop, size))


__all__ = ["Decoder", "Frame", "VideoLoadError", "coded", "iter_frames", "upright"]
