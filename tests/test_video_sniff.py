"""Videos recognized by their bytes, not their names (engine/video/sniff.py): clips written with PyAV in
many containers are recognized and probe; a clip named .jpg, a photo named .mp4 and a clip with no
extension are dreamed as what they are through `dreamfleet dream`; a file that is neither fails saying so."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
from PIL import Image  # noqa: E402
from video_fixtures import _add_audio, pan_frames  # noqa: E402

from dreamfleet.backends import create_backend  # noqa: E402
from dreamfleet.cli import main  # noqa: E402
from dreamfleet.engine.config import make_config  # noqa: E402
from dreamfleet.engine.inputs import discover  # noqa: E402
from dreamfleet.engine.job import run_job  # noqa: E402
from dreamfleet.engine.video.probe import NotAVideo, probe_video  # noqa: E402
from dreamfleet.engine.video.sniff import content_kind, image_format, read_head, video_container  # noqa: E402

SIZE = (64, 48)  # W, H
# (file name, FFmpeg muxer, muxer options, codec, pixel format, the container the sniffer must name)
CONTAINERS = [
    ("a.mp4", "mp4", {}, "libx264", "yuv420p", "mp4"),
    ("a.mov", "mov", {}, "libx264", "yuv420p", "mov"),
    ("a.3gp", "3gp", {}, "libx264", "yuv420p", "3gp"),
    ("a.mkv", "matroska", {}, "libx264", "yuv420p", "matroska"),
    ("a.webm", "webm", {}, "libvpx-vp9", "yuv420p", "webm"),
    ("a.avi", "avi", {}, "mpeg4", "yuv420p", "avi"),
    ("a.wmv", "asf", {}, "wmv2", "yuv420p", "asf"),
    ("a.ts", "mpegts", {}, "libx264", "yuv420p", "mpegts"),
    ("a.m2ts", "mpegts", {"mpegts_m2ts_mode": "1"}, "libx264", "yuv420p", "m2ts"),
    ("a.mpg", "mpeg", {}, "mpeg2video", "yuv420p", "mpeg-ps"),
    ("a.flv", "flv", {}, "flv", "yuv420p", "flv"),
    ("a.mxf", "mxf", {}, "mpeg2video", "yuv420p", "mxf"),
    ("a.y4m", "yuv4mpegpipe", {}, "wrapped_avframe", "yuv420p", "y4m"),
    ("a.nut", "nut", {}, "ffv1", "yuv420p", "nut"),
]


def write(path: Path, fmt: str, options: dict, codec: str, pix_fmt: str, n: int = 6, audio: str | None = None) -> Path:
    """``n`` frames of the pan, 25 fps, in container ``fmt`` (FFmpeg muxer name) whatever ``path`` is called."""
    with av.open(str(path), "w", format=fmt, options=options) as out:
        vs = out.add_stream(codec, rate=25)
        if audio:
            out.add_stream(audio, rate=48000).layout = "mono"
        vs.width, vs.height, vs.pix_fmt = *SIZE, pix_fmt
        if codec == "libx264":
            vs.options = {"preset": "ultrafast"}
        if fmt == "mxf":
            vs.bit_rate = 2_000_000
        for t, img in enumerate(pan_frames(n, SIZE)):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = t, Fraction(1, 25)
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        if audio:
            _add_audio(out, n / 25)
    return path


@pytest.mark.parametrize("name,fmt,options,codec,pix_fmt,want", CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_container_recognized_by_bytes_and_probes(tmp_path, name, fmt, options, codec, pix_fmt, want):
    path = write(tmp_path / name, fmt, options, codec, pix_fmt)
    head = read_head(path)
    assert len(head) <= 4096 and video_container(head) == want and content_kind(head) == "video"
    misnamed = tmp_path / "clip.jpg"
    misnamed.write_bytes(path.read_bytes())
    info = probe_video(misnamed)  # the name says nothing to FFmpeg either
    assert (info.width, info.height) == SIZE


def test_heads_that_are_not_video():
    ogg_page = b"OggS\x00\x02" + bytes(20) + b"\x01\x2a"  # page header, one 42-byte segment
    assert video_container(ogg_page + b"\x80theora\x03\x02\x01" + bytes(31)) == "ogg-theora"
    assert video_container(ogg_page + b"\x01vorbis" + bytes(35)) is None  # Ogg audio is no video
    assert video_container(b"OggS\x00\x02" + bytes(20) + b"\x01\x13OpusHead" + bytes(11)) is None
    assert video_container(b"\x00\x00\x00\x18ftypheic" + bytes(12)) is None  # a HEIF still
    assert video_container(b"\x00\x00\x00\x18ftypM4A " + bytes(12)) is None  # MPEG-4 audio
    assert video_container(b"\x00\x00\x00\x18ftyp3gp5" + bytes(12)) == "3gp"
    assert video_container(b"\x47" + bytes(187) + b"\x47" + bytes(100)) is None  # 2 TS packets: too few to tell
    for text in (b"", b"hello, not a video at all", b"GIF89a" + bytes(10)):
        assert video_container(text) is None
    rgb = np.zeros((8, 8, 3), np.uint8)
    assert content_kind(b"hello, this is text") is None and content_kind(b"") is None
    for fmt in ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"):
        import io

        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, fmt)
        assert image_format(buf.getvalue()[:4096]) == fmt and content_kind(buf.getvalue()) == "image"


def test_discovery_takes_extensionless_files_by_content(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "clip", "matroska", {}, "libx264", "yuv420p")
    Image.fromarray(pan_frames(1, SIZE)[0]).save(folder / "photo", "JPEG")
    (folder / "LICENSE").write_text("MIT License, no media here")
    items, problems = discover([str(folder)])
    assert [(i.rel, i.kind) for i in items] == [("clip", "video"), ("photo", "image")] and not problems
    with pytest.raises(NotAVideo, match="not a video container"):
        probe_video(folder / "photo")


def test_misnamed_files_dreamed_as_what_they_are(tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    write(folder / "clip.jpg", "mp4", {}, "libx264", "yuv420p", n=4)  # a video named .jpg
    write(folder / "noext", "mpegts", {}, "libx264", "yuv420p", n=4)  # a video without an extension
    Image.fromarray(pan_frames(1, SIZE)[0]).save(folder / "photo.mp4", "JPEG")  # a photo named .mp4
    (folder / "junk.mp4").write_text("plain text, named like a video")
    (folder / "junk.jpg").write_text("plain text, named like a photo")
    code = main(["dream", str(folder), "-o", str(out), "--random-weights", "--max-side", "64", "--iterations", "1",
                 "--octaves", "1", "--no-progress"])
    assert code == 1  # the two junk files failed; the rest were dreamed
    recs = {r["rel"]: r for r in map(json.loads, (out / "dreamfleet-report.jsonl").read_text().splitlines())
            if "rel" in r}
    assert recs["clip.jpg"]["status"] == "done" and recs["clip.jpg"]["output"].endswith("clip.jpg.mp4")
    assert recs["noext"]["status"] == "done" and recs["noext"]["output"].endswith("noext.mp4")
    assert probe_video(out / "clip.jpg.mp4").frames == 4 and (out / "noext.mp4").exists()
    assert recs["photo.mp4"]["status"] == "done" and recs["photo.mp4"]["output"].endswith("photo.mp4.png")
    assert Image.open(out / "photo.mp4.png").format == "PNG" and not recs["photo.mp4"].get("video")
    for junk in ("junk.mp4", "junk.jpg"):
        assert recs[junk]["status"] == "failed"
        assert recs[junk]["reason"].startswith("not an image or a video: its first bytes"), recs[junk]
        assert "'plain te'" in recs[junk]["reason"]
    capsys.readouterr()
    assert main(["dream", str(folder), "-o", str(out), "--random-weights", "--max-side", "64", "--iterations", "1",
                 "--octaves", "1", "--no-progress"]) == 1
    assert "0 dreamed, 3 skipped, 2 failed" in capsys.readouterr().out  # re-planned outputs found on the rerun



def test_mpeg_ps_named_jpg_keeps_its_audio(tmp_path):
    """FFmpeg alone would open an MPEG-PS stream named .jpg as a JPEG (image2): the demuxer comes from the bytes."""
    clip = write(tmp_path / "ps.jpg", "mpeg", {}, "mpeg2video", "yuv420p", n=4, audio="mp2")
    cfg = make_config(None, None, dict(model="googlenet", random_weights=True, max_side=64, iterations=1, octaves=1))
    rep = run_job(cfg, [str(clip)], tmp_path / "out", create_backend, progress=False)
    (rec,) = rep.records
    assert rec.status == "done" and rec.output.endswith("ps.jpg.mp4"), rec.reason
    assert rec.video["audio"] == "copied" and rec.video["frames"] == 4
    with av.open(str(tmp_path / "out" / "ps.jpg.mp4")) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
