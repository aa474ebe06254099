"""Frames out of a video: upright RGB uint8 with their index, pts and time base, streamed (PyAV).

``Decoder`` yields :class:`Frame` objects in presentation order. ``rgb`` is the frame as
displayed: the container's rotation (a phone clip's display matrix) is applied, so the dream
sees the picture upright; ``VideoEncoder`` turns it back and keeps the metadata. ``size``
(W, H, display orientation) resizes in FFmpeg's scaler (area filter) before the RGB array exists.

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

log = logging.getLogger(__name__)

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

    def _rgb(self, frame, rotation: int) -> np.ndarray:
        w = h = None
        if self.size is not None:
            w, h = self.size if abs(rotation) % 180 != 90 else self.size[::-1]  # coded orientation
        out = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA" if w else None)
        return upright(out.to_ndarray(), rotation)  # [H, W, 3] uint8

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

    def __iter__(self) -> Iterator[Frame]:
        with local_copy(self.path, self.storage) as local:
            if self.info is None:
                self.info = probe_video(local)
            rotation = self.info.rotation
            with contextlib.closing(open_input(local)) as container:
                vs = video_stream(container)
                vs.codec_context.thread_count = self.threads
                tb = vs.time_base
                step = int(round(1 / (self.info.rate * tb))) if self.info.rate and tb else 1
                last_pts = None
                for vf in self._frames(container, tb):
                    index = self.decoded
                    self.decoded += 1
                    pts = vf.pts if vf.pts is not None else (last_pts + step if last_pts is not None else 0)
                    last_pts = pts
                    if index < self.start:
                        continue
                    if self.stop is not None and index >= self.stop:
                        return
                    yield Frame(index, pts, tb, self._rgb(vf, rotation), vf.duration or None)
                expected = self.info.frames
                if not self.truncated and expected and self.decoded < expected:
                    bad = f" ({self.bad_packets} packet(s) failed to decode)" if self.bad_packets else ""
                    self._note_end(f"decoded {self.decoded} of the {expected} frames the header lists{bad}")


def iter_frames(path, storage: Storage | None = None, start: int = 0, stop: int | None = None,
                size: tuple[int, int] | None = None) -> Iterator[Frame]:
    """Frames ``start <= index < stop`` of ``path`` (see :class:`Decoder` to learn if the file was cut short)."""
    return iter(Decoder(path, storage, start, stop, size))


__all__ = ["Decoder", "Frame", "VideoLoadError", "coded", "iter_frames", "upright"]
