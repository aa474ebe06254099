"""Dreamed frames back into a video that plays everywhere, with the source's timing and audio (PyAV).

``VideoEncoder.write`` encodes each upright RGB frame at its source pts, in the source time base
(the MP4 track timescale is set to that time base's denominator, so 30000/1001 fps and VFR
timestamps come back exact), as ``yuv420p`` at even dimensions (an odd last row/column is
cropped), BT.709 tagged, with the source's display rotation kept (frames are turned back to the
coded orientation). Frames go to a video-only temporary beside the destination as they come.

``close(audio_from)`` muxes the final file: the video packets and the source's audio packets,
interleaved by time, audio copied packet for packet (remux). Only an audio codec the output
container cannot hold is re-encoded to AAC, and the returned facts say so. The file is written
to a temporary and renamed (``+faststart``: the index is at the front); an object-store
destination is uploaded after the local file is complete.
"""
from __future__ import annotations

import contextlib
import heapq
import logging
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..atomic import temporary_for
from ..storage import Storage, location
from .decode import coded
from .probe import VideoInfo, local_copy
from .remux import audio_packets, open_audio_outputs

log = logging.getLogger(__name__)

OUTPUT_FORMAT = "mp4"
PIX_FMT = "yuv420p"
_QUALITY_OPTION = {"libx264": "crf", "libx265": "crf", "libsvtav1": "crf", "libvpx-vp9": "crf", "h264_nvenc": "cq",
                   "hevc_nvenc": "cq", "mpeg4": "qscale"}  # how each encoder spells "constant quality"
_CANDIDATES = ("libx264", "h264_nvenc", "libx265", "hevc_nvenc", "libsvtav1", "libvpx-vp9", "mpeg4")


def available_codecs() -> list[str]:
    """Video encoders this FFmpeg build has that MP4 can hold (for ``--video-codec``), libx264 first."""
    import av

    return [c for c in _CANDIDATES if c in av.codecs_available]


def check_codec(codec: str, size: tuple[int, int] = (64, 64)) -> str | None:
    """None if ``codec`` opens here as a yuv420p encoder; else why not (for ``--video-codec`` preflight).

    ``h264_nvenc`` is in the wheel's FFmpeg everywhere but opens only where an NVIDIA GPU and driver are.
    """
    import av

    if codec not in available_codecs():
        return f"video codec {codec!r} is not available; choose one of {available_codecs()}"
    try:
        cc = av.CodecContext.create(codec, "w")
        cc.width, cc.height, cc.pix_fmt, cc.time_base = size[0], size[1], PIX_FMT, Fraction(1, 25)
        cc.open()
    except (av.FFmpegError, ValueError, OSError) as exc:
        return f"video codec {codec!r} cannot be opened on this machine ({getattr(exc, 'strerror', None) or exc})"
    return None


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """(W, H) rounded down to even (yuv420p needs it); at least 2x2."""
    return max(2, size[0] - size[0] % 2), max(2, size[1] - size[1] % 2)


def crf_range(codec: str) -> tuple[int, int]:
    """The constant-quality values ``codec`` accepts (lower is better)."""
    return (0, 63) if codec in ("libsvtav1", "libvpx-vp9") else (0, 51)


def _codec_options(codec: str, crf: int, preset: str | None) -> dict:
    lo, hi = crf_range(codec)
    if not lo <= crf <= hi:
        raise ValueError(f"crf {crf} is out of range for {codec}: {lo}..{hi}")
    opts = {}
    key = _QUALITY_OPTION.get(codec)
    if key == "qscale":
        opts["qscale"] = str(max(1, min(31, round(crf / 51 * 30) + 1)))
    elif key:
        opts[key] = str(crf)
    if codec == "libvpx-vp9":
        opts["b"] = "0"
    if codec == "libx265":
        opts["x265-params"] = "log-level=error"
    if codec.endswith("_nvenc"):
        opts["rc"] = "vbr"
    if preset:
        opts["preset"] = preset
    return opts


class VideoEncoder:
    """Encode upright RGB frames at their source pts; ``close`` muxes audio and writes ``dest`` atomically."""

    def __init__(self, dest, info: VideoInfo, size: tuple[int, int], codec: str = "libx264", crf: int = 18,
                 storage: Storage | None = None, preset: str | None = None):
        import av

        if codec not in available_codecs():
            raise ValueError(f"video codec {codec!r} is not available; choose one of {available_codecs()}")
        options = _codec_options(codec, crf, preset)  # checks crf before anything is created
        self.dest, self.info, self.codec, self.crf = location(dest), info, codec, crf
        self.storage = storage
        self.size = even_size(size)  # display orientation
        self.rotation = info.rotation
        self.frames, self.last_pts = 0, None
        self._durations: dict[int, int] = {}  # pts -> duration of frames the encoder still holds
        self._first_pts: int | None = None
        self._last_duration = 1
        self._workdir = Path(tempfile.mkdtemp(prefix="dreamfleet-encode-"))
        if isinstance(self.dest, Path):  # beside the destination (a long clip may not fit /tmp); a killed
            self.dest.parent.mkdir(parents=True, exist_ok=True)  # run's leftover is a recognized temporary
            self._video_tmp = temporary_for(self.dest)
        else:
            self._video_tmp = self._workdir / "video.mp4"
        self._out = av.open(str(self._video_tmp), "w", format=OUTPUT_FORMAT,
                            options=self._track_options())
        w, h = self.size if abs(self.rotation) % 180 != 90 else self.size[::-1]  # coded orientation
        vs = self._out.add_stream(codec, rate=info.rate or None, options=options)
        vs.width, vs.height, vs.pix_fmt = w, h, PIX_FMT
        vs.time_base = info.time_base
        vs.codec_context.time_base = info.time_base
        cc = vs.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1  # BT.709, limited range
        if codec in ("libx265", "hevc_nvenc"):
            cc.codec_tag = "hvc1"  # the HEVC tag Apple players require
        self._stream = vs

    def _track_options(self) -> dict:
        """MP4 muxer options: the track and movie timescales are the source time base's denominator, so every
        pts is exact, also a late first pts (a frame range), which the edit list states in the movie timescale."""
        den = self.info.time_base.denominator
        return {"video_track_timescale": str(den), "movie_timescale": str(den)} if den < (1 << 31) else {}

    def write(self, rgb: np.ndarray, pts: int, duration: int | None = None) -> None:
        """Encode one upright frame [H, W, 3] uint8 (H, W >= the output size) at ``pts`` (source time base).

        ``duration`` (``Frame.duration``) keeps the last frame's display time, hence the clip's duration;
        without it a frame lasts as long as the gap before it (one frame at the stream's rate for the first).
        """
        import av

        if self.last_pts is not None and pts <= self.last_pts:
            raise ValueError(f"frame pts {pts} is not after the previous {self.last_pts}: frames out of order")
        w, h = self.size
        if rgb.shape[0] < h or rgb.shape[1] < w:
            raise ValueError(f"frame is {rgb.shape[1]}x{rgb.shape[0]}, smaller than the output {w}x{h}")
        img = coded(np.ascontiguousarray(rgb[:h, :w]), self.rotation)
        vf = av.VideoFrame.from_ndarray(img, format="rgb24")
        vf = vf.reformat(format=PIX_FMT, dst_colorspace="ITU709", dst_color_range="MPEG")
        vf.pts, vf.time_base = pts, self.info.time_base
        if not duration:  # unknown: as long as the gap before it (VFR), or one frame at the stream's rate
            rate = self.info.rate
            duration = (pts - self.last_pts if self.last_pts is not None
                        else int(round(1 / (rate * self.info.time_base))) if rate else None)
        if duration:
            self._durations[pts] = duration  # until its packet comes out of the encoder (a few frames)
        if self._first_pts is None:
            self._first_pts = pts
        self._last_duration = duration or 1
        self._mux_encoded(self._stream.encode(vf))
        self.frames += 1
        self.last_pts = pts

    def _video_packets(self, src, out_stream):
        """The temporary's video packets for ``out_stream``, with the durations that make the clip end where
        its last frame stops showing. The MP4 muxer ends the presentation at the largest pts + duration and
        the track at the last dts + duration (both from the first dts), and the encoder's packets carry
        decode-order durations: so the last frame's packet gets the last frame's duration, and the last packet
        in decode order the one that ends the track there too."""
        vs = src.streams.video[0]
        held, first_dts = None, None
        for packet in src.demux(vs):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            if first_dts is None:
                first_dts = packet.dts
            if packet.pts == self.last_pts:
                packet.duration = self._last_duration
            if held is not None:
                yield held
            held = packet
        if held is not None:
            if held.pts != self.last_pts:
                end = self.last_pts + self._last_duration - self._first_pts  # on the decode timeline
                held.duration = max(1, end - (held.dts - first_dts))
            yield held

    def _mux_encoded(self, packets) -> None:
        """Mux encoder output into the temporary, each packet lasting as long as its frame (VFR: the
        muxer takes the last frame's display time, hence the clip's duration, from it)."""
        for packet in packets:
            duration = self._durations.pop(packet.pts, None)
            if duration:
                packet.duration = duration
            self._out.mux(packet)

    def _mux_final(self, final: Path, audio_from, audio_span) -> list[str]:
        """Remux the video temporary + ``audio_from``'s audio into ``final`` (interleaved by time)."""
        import av

        options = dict(self._track_options(), movflags="+faststart")
        with contextlib.ExitStack() as stack:
            src = stack.enter_context(av.open(str(self._video_tmp), "r"))
            out = stack.enter_context(av.open(str(final), "w", format=OUTPUT_FORMAT, options=options))
            vout = out.add_stream_from_template(src.streams.video[0])
            vout.time_base = self.info.time_base
            if self.rotation:
                vout.set_display_rotation(self.rotation)
            audio_src = None
            if audio_from is not None:
                audio_src = stack.enter_context(local_copy(audio_from, self.storage))
            routes, facts = open_audio_outputs(stack, audio_src, out)
            key = lambda p: p.dts * p.time_base  # noqa: E731  (interleave by decode time)
            streams = [self._video_packets(src, vout)] + [audio_packets(r, audio_span) for r in routes]
            for packet in heapq.merge(*streams, key=key):
                out.mux(packet)
            for r in routes:
                for packet in r.flush():
                    out.mux(packet)
        return facts

    def close(self, audio_from=None, audio_span: tuple | None = None) -> dict:
        """Finish the stream, mux the audio of ``audio_from`` (a path/URL, or None) and write ``dest``; the facts.

        ``audio_span`` = (start, end) in seconds (source clock) keeps only the audio packets that play
        within it, for a frame range; None keeps the whole track (every packet, unchanged).
        """
        try:
            self._mux_encoded(self._stream.encode(None))
            self._out.close()
            if self.frames == 0:
                raise ValueError(f"no frames were written for {self.dest}")
            if isinstance(self.dest, Path):
                final = temporary_for(self.dest)
            else:
                final = self._workdir / f"final.{OUTPUT_FORMAT}"
            try:
                audio = self._mux_final(final, audio_from, audio_span)
                self._publish(final)
            finally:
                if final.exists():
                    final.unlink()
        finally:
            self._drop_temporaries()
        return dict(codec=self.codec, crf=self.crf, pix_fmt=PIX_FMT, container=OUTPUT_FORMAT, faststart=True,
                    width=self.size[0], height=self.size[1], rotation=self.rotation, frames=self.frames,
                    time_base=str(self.info.time_base), audio=_audio_summary(audio), audio_streams=audio)

    def _publish(self, final: Path) -> None:
        if isinstance(self.dest, Path):
            with open(final, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(final, self.dest)
            return
        storage = self.storage or Storage()
        storage.call(f"write {self.dest}", storage.fs(self.dest).put_file, str(final), self.dest.path)

    def abort(self) -> None:
        """Drop everything written so far (the destination is untouched)."""
        with contextlib.suppress(Exception):
            self._out.close()
        self._drop_temporaries()

    def _drop_temporaries(self) -> None:
        self._video_tmp.unlink(missing_ok=True)
        shutil.rmtree(self._workdir, ignore_errors=True)


def _audio_summary(facts: list[str]) -> str:
    """One word for the record: "none", "copied", or the first re-encode note."""
    if not facts:
        return "none"
    changed = [f for f in facts if f != "copied"]
    return changed[0] if changed else "copied"


__all__ = ["OUTPUT_FORMAT", "PIX_FMT", "VideoEncoder", "available_codecs", "check_codec", "crf_range", "even_size"]
