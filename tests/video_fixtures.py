"""Short test clips generated with PyAV: a pan with AAC audio at 30000/1001 fps, a variable-frame-rate
clip, a clip with a scene cut, a rotated clip and a truncated file.

Every clip is tiny (96x64 or so, well under a second) so a test that decodes and re-encodes one
takes tens of milliseconds. The pan crops a sliding window out of a sample photo, so the true
optical flow between two frames is a known, constant shift. ``roundtrip``, ``times`` and
``audio_packets`` are what the tests compare a clip and its re-encoded copy by.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from dreamfleet.engine.video.decode import iter_frames
from dreamfleet.engine.video.encode import VideoEncoder
from dreamfleet.engine.video.probe import probe_video

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
NTSC = Fraction(30000, 1001)


def photo(name: str = "coffee.png", width: int = 320) -> np.ndarray:
    """A sample photo as [H, W, 3] uint8, resized to ``width`` (aspect kept)."""
    im = Image.open(SAMPLES / name).convert("RGB")
    h = round(im.height * width / im.width)
    return np.asarray(im.resize((width, h), Image.BILINEAR))


def pan_frames(n: int, size: tuple[int, int] = (96, 64), step: int = 2, name: str = "coffee.png") -> list[np.ndarray]:
    """``n`` crops of ``size`` (W, H) moving ``step`` px right per frame: frame t = photo[:, x0 + step * t]."""
    w, h = size
    src = photo(name, width=max(320, w + 16 + step * n))
    y0 = (src.shape[0] - h) // 2
    return [np.ascontiguousarray(src[y0:y0 + h, 8 + step * t:8 + step * t + w]) for t in range(n)]


def _add_audio(out, seconds: float) -> None:
    """Mux a 440 Hz tone of ``seconds`` into ``out`` (its stream must be added before the first mux)."""
    stream = out.streams.audio[0]
    rate = stream.codec_context.sample_rate
    n = int(seconds * rate)
    t = np.arange(n) / rate
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]  # [1, n] planar mono
    chunk = 1024
    resampler = av.AudioResampler(format=stream.codec_context.codec.audio_formats[0].name, layout="mono", rate=rate)
    for i in range(0, n, chunk):
        frame = av.AudioFrame.from_ndarray(tone[:, i:i + chunk].copy(), format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = i
        frame.time_base = Fraction(1, rate)
        for rf in resampler.resample(frame):
            out.mux(stream.encode(rf))
    out.mux(stream.encode(None))


def write_clip(path: Path, frames: list[np.ndarray], pts: list[int], time_base: Fraction,
               rate: Fraction | None = None, audio: str | None = None, rotation: int = 0,
               codec: str = "libx264", faststart: bool = False, gop: int | None = None) -> Path:
    """Encode ``frames`` with the given per-frame ``pts`` in ``time_base`` (and optionally a tone in ``audio``)."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", options={"movflags": "+faststart"} if faststart else {}) as out:
        vs = out.add_stream(codec, rate=rate or NTSC)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.time_base = time_base
        vs.codec_context.time_base = time_base
        if codec == "libx264":
            vs.options = {"crf": "12", "preset": "ultrafast"}
            if gop:  # short GOPs with B-frames: seeking lands mid-clip, frames are reordered
                vs.options["x264-params"] = f"keyint={gop}:min-keyint={gop}:bframes=2:scenecut=0"
        if rotation:
            vs.set_display_rotation(rotation)
        if audio:
            a = out.add_stream(audio, rate=8000 if audio == "pcm_mulaw" else 48000)
            a.layout = "mono"
        for img, p in zip(frames, pts):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = p, time_base
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        if audio:
            _add_audio(out, float(pts[-1] * time_base) + 0.1)
    return path


def pan_clip(path: Path, n: int = 24, audio: bool = True) -> Path:
    """The pan at exactly 30000/1001 fps (time base 1/30000, pts = 1001 * t) with an AAC tone."""
    return write_clip(path, pan_frames(n), [1001 * t for t in range(n)], Fraction(1, 30000), NTSC,
                      audio="aac" if audio else None)


def gop_clip(path: Path, n: int = 30, gop: int = 5) -> Path:
    """The 30000/1001 pan with a keyframe every ``gop`` frames and B-frames (for seeking)."""
    return write_clip(path, pan_frames(n), [1001 * t for t in range(n)], Fraction(1, 30000), NTSC, gop=gop)


def vfr_clip(path: Path, n: int = 16) -> Path:
    """Variable frame rate: gaps of 1, 2 and 3 ticks of 1/1000 s * 20 (20, 40, 60 ms) in turn."""
    pts, t = [], 0
    for i in range(n):
        pts.append(t)
        t += 20 * (1 + i % 3)
    return write_clip(path, pan_frames(n), pts, Fraction(1, 1000), Fraction(25))


def cut_clip(path: Path, n: int = 12, cut_at: int = 6) -> Path:
    """A pan over one photo, then (from frame ``cut_at``) a pan over another: one hard scene cut."""
    frames = pan_frames(cut_at) + pan_frames(n - cut_at, name="astronaut.png")
    return write_clip(path, frames, list(range(n)), Fraction(1, 25), Fraction(25))


def rotated_clip(path: Path, n: int = 6, rotation: int = 90) -> Path:
    """A clip whose container says: display rotated by ``rotation`` degrees (counter-clockwise)."""
    return write_clip(path, pan_frames(n), list(range(n)), Fraction(1, 25), Fraction(25), rotation=rotation)


def truncated_clip(path: Path, n: int = 24, keep: float = 0.6) -> Path:
    """The first ``keep`` of a faststart MP4's bytes, as a download cut short would leave it.

    The index (moov) is at the front, so the cut file still opens and lists ``n`` frames, but
    only some of them decode. (An MP4 whose index is at the end does not open at all once cut:
    that is the broken-file case.)
    """
    full = path.with_name("full-" + path.name)
    write_clip(full, pan_frames(n), [1001 * t for t in range(n)], Fraction(1, 30000), NTSC, faststart=True)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def truncated_mkv(path: Path, n: int = 24, keep: float = 0.6) -> Path:
    """A Matroska clip cut short: no frame count in it, but its header states the duration."""
    full = path.with_name("full-" + path.name)
    write_clip(full, pan_frames(n), [1001 * t for t in range(n)], Fraction(1, 30000), NTSC)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def broken_clip(path: Path) -> Path:
    """A pan MP4 (index at the end) cut at half: it starts like a video but FFmpeg cannot open it."""
    full = path.with_name("full-" + path.name)
    pan_clip(full, n=12, audio=False)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[:len(data) // 2])
    return path


def ts_pan_clip(path: Path, n: int = 24) -> Path:
    """The pan in an MPEG-TS container (time base 1/90000), the container a cut-short stream is often in."""
    return write_clip(path, pan_frames(n), [3003 * t for t in range(n)], Fraction(1, 90000), NTSC)


def roundtrip(src, dest, size=None, **enc) -> dict:
    """Decode ``src`` and encode every frame unchanged into ``dest`` (audio from ``src``); the record facts."""
    info = probe_video(src)
    encoder = VideoEncoder(dest, info, size or info.display_size, **enc)
    for f in iter_frames(src):
        encoder.write(f.rgb, f.pts, f.duration)
    return encoder.close(audio_from=src)


def times(path) -> list[Fraction]:
    """Every frame's presentation time in seconds, exactly (pts * time base)."""
    return [f.pts * f.time_base for f in iter_frames(path)]


def audio_packets(path, timed: bool = False) -> list[tuple]:
    """The first audio stream's packets: (pts, dts, duration, bytes), or (seconds, bytes) when ``timed``."""
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(c.streams.audio[0]) if p.size]
        if timed:
            return [(p.pts * p.time_base, bytes(p)) for p in packets]
        return [(p.pts, p.dts, p.duration, bytes(p)) for p in packets]
