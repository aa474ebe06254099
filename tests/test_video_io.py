"""Video I/O and flow: timing, audio, rotation kept through decode -> encode; discovery by content;
cut-short and broken files; DIS flow, its reliability mask and scene cuts (clips from video_fixtures)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("cv2")

import av  # noqa: E402
import video_fixtures as vf  # noqa: E402
from video_fixtures import audio_packets, roundtrip, times  # noqa: E402

from dreamfleet.engine.imageio import ImageLoadError  # noqa: E402
from dreamfleet.engine.inputs import discover, output_path  # noqa: E402
from dreamfleet.engine.video.decode import Decoder, iter_frames  # noqa: E402
from dreamfleet.engine.video.encode import VideoEncoder, available_codecs, check_codec  # noqa: E402
from dreamfleet.engine.video.flow import FlowEstimator, flow_pair, warp_np, with_flow  # noqa: E402
from dreamfleet.engine.video.probe import VideoLoadError, probe_video, sniff_video  # noqa: E402


@pytest.fixture(scope="module")
def pan(tmp_path_factory):
    return vf.pan_clip(tmp_path_factory.mktemp("clips") / "pan.mp4")


def test_ntsc_clip_keeps_frames_timing_and_audio_packets(pan, tmp_path):
    facts = roundtrip(pan, tmp_path / "out.mp4")
    src, out = probe_video(pan), probe_video(tmp_path / "out.mp4")
    assert out.frames == src.frames == 24 and out.time_base == src.time_base == Fraction(1, 30000)
    assert out.rate == Fraction(30000, 1001) and out.duration == src.duration
    assert times(tmp_path / "out.mp4") == times(pan) == [Fraction(1001 * t, 30000) for t in range(24)]
    assert audio_packets(tmp_path / "out.mp4") == audio_packets(pan)  # copied: bytes, pts, dts, durations
    assert facts["audio"] == "copied" and facts["pix_fmt"] == "yuv420p" and facts["codec"] == "libx264"
    assert out.codec == "h264" and out.pix_fmt == "yuv420p"
    head = (tmp_path / "out.mp4").read_bytes()
    assert head.index(b"moov") < head.index(b"mdat")  # +faststart: the index comes first
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temporaries left


def test_frames_decode_close_to_source_and_ranges_resize(pan, tmp_path):
    roundtrip(pan, tmp_path / "out.mp4")
    a = [f.rgb.astype(np.int16) for f in iter_frames(pan)]
    b = [f.rgb.astype(np.int16) for f in iter_frames(tmp_path / "out.mp4")]
    assert max(np.abs(x - y).mean() for x, y in zip(a, b)) < 3  # crf 18: visually lossless
    part = list(iter_frames(pan, start=5, stop=9, size=(48, 32)))
    assert [f.index for f in part] == [5, 6, 7, 8] and [f.pts for f in part] == [5005, 6006, 7007, 8008]
    assert part[0].rgb.shape == (32, 48, 3) and part[0].rgb.dtype == np.uint8


@pytest.mark.parametrize("make", [vf.gop_clip, vf.vfr_clip], ids=["keyframes-every-5", "vfr"])
def test_starting_mid_clip_seeks_and_matches_a_full_decode(make, tmp_path):
    src = make(tmp_path / "in.mp4")
    full = list(iter_frames(src))
    for start in (1, 7, 11, len(full) - 1):
        dec = Decoder(src, start=start, stop=start + 3)
        part = list(dec)
        want = full[start:start + 3]
        assert [(f.index, f.pts) for f in part] == [(f.index, f.pts) for f in want]
        assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(part, want)) and not dec.truncated
    assert list(iter_frames(src, start=len(full))) == []


@pytest.mark.parametrize("make", [vf.vfr_clip, vf.ts_pan_clip], ids=["vfr", "mpegts-90k"])
def test_variable_frame_rate_and_time_base_kept(make, tmp_path):
    src = make(tmp_path / "in.mp4")  # (ts_pan_clip writes MPEG-TS whatever the name says)
    roundtrip(src, tmp_path / "out.mp4")
    assert times(tmp_path / "out.mp4") == times(src)
    out, ref = probe_video(tmp_path / "out.mp4"), probe_video(src)
    assert out.time_base == ref.time_base
    if make is vf.vfr_clip:
        assert out.duration == ref.duration  # the last frame keeps its own display time
    src_t = times(src)
    if make is vf.vfr_clip:
        assert len({b - a for a, b in zip(src_t, src_t[1:])}) == 3  # really variable: 20, 40, 60 ms


@pytest.mark.parametrize("ext,vcodec,acodec", [("mkv", "libx264", "aac"), ("webm", "libvpx-vp9", "libopus"),
                                               ("avi", "mpeg4", "libmp3lame"), ("mov", "libx264", "aac")])
def test_every_input_container_round_trips_with_its_audio(ext, vcodec, acodec, tmp_path):
    src = vf.write_clip(tmp_path / f"in.{ext}", vf.pan_frames(8), [1001 * t for t in range(8)],
                        Fraction(1, 30000), vf.NTSC, codec=vcodec, audio=acodec)
    dec = Decoder(src)
    assert len(list(dec)) == 8 and not dec.truncated  # the audio runs longer: not a cut-short video
    facts = roundtrip(src, tmp_path / "out.mp4")
    assert facts["audio"] == "copied" and times(tmp_path / "out.mp4") == times(src)
    assert audio_packets(tmp_path / "out.mp4", timed=True) == audio_packets(src, timed=True)  # time bases differ


def test_rotation_kept_and_frames_upright(tmp_path):
    src = vf.rotated_clip(tmp_path / "rot.mp4", rotation=90)
    info = probe_video(src)
    assert info.rotation == 90 and (info.width, info.height) == (96, 64) and info.display_size == (64, 96)
    first = next(iter_frames(src)).rgb
    assert first.shape == (96, 64, 3)  # upright: as a player shows it
    facts = roundtrip(src, tmp_path / "out.mp4")
    out = probe_video(tmp_path / "out.mp4")
    assert out.rotation == 90 and (out.width, out.height) == (96, 64) and facts["rotation"] == 90
    again = next(iter_frames(tmp_path / "out.mp4")).rgb
    assert np.abs(again.astype(int) - first.astype(int)).mean() < 3  # turned back the right way


def test_odd_size_is_cropped_to_even_and_codecs_listed(pan, tmp_path):
    info = probe_video(pan)
    enc = VideoEncoder(tmp_path / "odd.mp4", info, (95, 63))
    for f in iter_frames(pan, stop=3, size=(95, 63)):
        enc.write(f.rgb, f.pts, f.duration)
    facts = enc.close(audio_from=None)
    out = probe_video(tmp_path / "odd.mp4")
    assert (out.width, out.height) == (94, 62) and out.frames == 3 and facts["audio"] == "none" and not out.audio
    assert available_codecs()[0] == "libx264" and check_codec("libx264") is None
    assert "choose one of ['libx264'" in check_codec("no-such-codec")
    with pytest.raises(ValueError, match="libx264"):
        VideoEncoder(tmp_path / "x.mp4", info, (96, 64), codec="no-such-codec")
    with pytest.raises(ValueError, match="crf 52 is out of range for libx264: 0..51"):
        VideoEncoder(tmp_path / "x.mp4", info, (96, 64), crf=52)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]  # nothing left by the refused encoders


def test_encoder_writes_beside_the_destination_and_abort_leaves_nothing(pan, tmp_path):
    from dreamfleet.engine.atomic import TMP_SUFFIX

    enc = VideoEncoder(tmp_path / "sub" / "out.mp4", probe_video(pan), (96, 64), preset="ultrafast")  # no lookahead
    for f in iter_frames(pan, stop=2):
        enc.write(f.rgb, f.pts)
    with pytest.raises(ValueError, match="out of order"):
        enc.write(f.rgb, f.pts)
    names = [p.name for p in (tmp_path / "sub").iterdir()]
    assert len(names) == 1 and names[0].endswith(TMP_SUFFIX)  # the video so far: a recognized temporary
    enc.abort()
    assert list((tmp_path / "sub").iterdir()) == []


def test_frame_range_keeps_its_audio_span(pan, tmp_path):
    info = probe_video(pan)
    enc = VideoEncoder(tmp_path / "part.mp4", info, info.display_size, codec="libx265", crf=28)
    part = list(iter_frames(pan, start=6, stop=12))
    for f in part:
        enc.write(f.rgb, f.pts, f.duration)
    span = (float(part[0].time), float(part[-1].time + part[-1].duration * part[-1].time_base))
    facts = enc.close(audio_from=pan, audio_span=span)
    kept = audio_packets(tmp_path / "part.mp4")
    assert facts["audio"] == "copied" and 0 < len(kept) < len(audio_packets(pan)) and set(kept) <= set(audio_packets(pan))
    assert all(span[0] - 0.03 < p[0] / 48000 < span[1] for p in kept)  # AAC frames of 1024 samples: 21 ms
    assert times(tmp_path / "part.mp4") == [f.pts * f.time_base for f in part]
    assert probe_video(tmp_path / "part.mp4").codec == "hevc"


def test_audio_reencoded_only_when_mp4_cannot_hold_it(tmp_path):
    src = vf.write_clip(tmp_path / "in.mov", vf.pan_frames(6), list(range(6)), Fraction(1, 25), Fraction(25),
                        audio="pcm_mulaw")
    facts = roundtrip(src, tmp_path / "out.mp4")
    assert facts["audio"] == "aac (re-encoded: mp4 cannot hold pcm_mulaw)"
    out = probe_video(tmp_path / "out.mp4")
    assert [a["codec"] for a in out.audio] == ["aac"] and out.frames == 6 and out.audio[0]["rate"] == 8000

    def seconds(path):
        with av.open(str(path)) as c:
            return sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].codec_context.sample_rate

    assert abs(seconds(tmp_path / "out.mp4") - seconds(src)) < 0.15  # the whole track (AAC adds priming)


def test_video_found_by_content_and_text_named_mp4_fails(pan, tmp_path):
    heads = {"mp4": pan.read_bytes()[:16], "mkv": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01" + bytes(7),
             "avi": b"RIFF\x00\x10\x00\x00AVI LIST", "heic": b"\x00\x00\x00\x18ftypheic" + bytes(4),
             "text": b"hello, not a video", "png": b"\x89PNG\r\n\x1a\n" + bytes(8)}
    assert {k for k, h in heads.items() if sniff_video(h)} == {"mp4", "mkv", "avi"}
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "renamed.bin").write_bytes(pan.read_bytes())
    (folder / "fake.mp4").write_text("this is text, not a video")
    (folder / "notes.dat").write_text("not media")
    (folder / "a.png").write_bytes(b"\x89PNG")
    items, problems = discover([str(folder)])
    assert [(i.rel, i.kind) for i in items] == [("a.png", "image"), ("fake.mp4", "video"), ("sub/renamed.bin", "video")]
    assert not problems
    assert probe_video(items[2].path).frames == 24
    with pytest.raises(VideoLoadError, match="not a video container"):
        probe_video(items[1].path)
    named, _ = discover([str(folder / "sub" / "renamed.bin")])
    globbed, _ = discover([str(folder / "**" / "*.bin")])
    assert named[0].kind == globbed[0].kind == "video"
    out = tmp_path / "out"
    assert output_path(out, "sub/renamed.bin", kind="video") == (out / "sub" / "renamed.bin.mp4").resolve()
    assert output_path(out, "clip.mp4", "jpeg", kind="video").name == "clip.mp4"


def test_object_store_video_is_found_and_decoded(pan):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    fs.pipe({"/df-video/in/clip.bin": pan.read_bytes(), "/df-video/in/readme.txt": b"text"})
    try:
        items, problems = discover(["memory://df-video/in"])
        assert [(i.rel, i.kind) for i in items] == [("clip.bin", "video")] and not problems
        assert probe_video(items[0].path).frames == 24
        assert [f.pts for f in iter_frames(items[0].path, stop=3)] == [0, 1001, 2002]
        dest = output_path("memory://df-video/out", items[0].rel, kind="video")
        facts = roundtrip(items[0].path, dest)
        assert str(dest) == "memory://df-video/out/clip.bin.mp4" and facts["audio"] == "copied"
        assert probe_video(dest).frames == 24 and fs.ls("/df-video/out", detail=False) == ["/df-video/out/clip.bin.mp4"]
    finally:
        fs.rm("/df-video", recursive=True)


def test_truncated_file_decodes_partially_and_says_so(tmp_path):
    dec = Decoder(vf.truncated_clip(tmp_path / "cut.mp4", n=24, keep=0.6))
    frames = list(dec)
    assert 0 < len(frames) < 24 and dec.truncated and "of the 24 frames" in dec.error
    assert [f.index for f in frames] == list(range(len(frames)))
    mkv = Decoder(vf.truncated_mkv(tmp_path / "cut.mkv", n=24, keep=0.6))
    assert 0 < len(list(mkv)) < 24 and mkv.truncated and "s of the 0.800 s the header lists" in mkv.error
    assert probe_video(tmp_path / "cut.mkv").estimated_frames == 24  # duration x rate: no count in Matroska
    whole = Decoder(vf.pan_clip(tmp_path / "whole.mp4", n=8, audio=False))
    assert len(list(whole)) == 8 and not whole.truncated and whole.error is None


def test_broken_and_empty_files_raise_video_load_error(tmp_path):
    broken = vf.broken_clip(tmp_path / "broken.mp4")
    with pytest.raises(VideoLoadError, match="broken, or cut short") as err:
        probe_video(broken)
    assert isinstance(err.value, ImageLoadError)  # the job's failure handling records it like an image's
    with pytest.raises(VideoLoadError):
        list(iter_frames(broken))
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoLoadError, match="empty file"):
        probe_video(tmp_path / "empty.mp4")


def test_flow_recovers_pan_and_flags_the_entering_border():
    prev, cur = vf.pan_frames(2, size=(128, 96), step=3)
    pair = flow_pair(prev, cur)
    assert pair.flow.shape == (96, 128, 2) and pair.flow.dtype == np.float32 and not pair.cut
    dx, dy = np.median(pair.flow[pair.reliable], axis=0)
    assert abs(dx - 3) < 0.25 and abs(dy) < 0.25  # cur (x, y) was at (x + 3, y) in prev
    assert not pair.reliable[:, -3:].any()  # new content came in over the right edge: occluded in prev
    assert pair.reliable[8:-8, 8:-8].mean() > 0.9
    warped = warp_np(prev, pair.flow).astype(np.int16)
    err = np.abs(warped - cur)[pair.reliable].mean()
    assert err < 0.3 * np.abs(prev.astype(np.int16) - cur)[pair.reliable].mean()  # the warp lines prev up


def test_reliability_equals_the_plain_numpy_formula():
    """The allocation-free check against Sundaram et al.'s formulas written out with np.gradient."""
    import cv2

    from dreamfleet.engine.video.flow import CONSISTENCY, MOTION_EDGE, reliability

    prev, cur = vf.pan_frames(2, size=(128, 96), step=3)
    g0, g1 = cv2.cvtColor(prev, cv2.COLOR_RGB2GRAY), cv2.cvtColor(cur, cv2.COLOR_RGB2GRAY)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    back, fwd = dis.calc(g1, g0, None), dis.calc(g0, g1, None)
    back[40:60, 50:70] += 4.0  # a patch that disagrees with the forward flow, and its motion boundary
    h, w = back.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = xs + back[..., 0], ys + back[..., 1]
    f_at = warp_np(fwd, back)
    a, c = CONSISTENCY
    agree = ((back + f_at) ** 2).sum(-1) <= a * ((back ** 2).sum(-1) + (f_at ** 2).sum(-1)) + c
    grads = [g for ch in (0, 1) for g in np.gradient(back[..., ch])]
    ea, eb = MOTION_EDGE
    edge = sum(g ** 2 for g in grads) > ea * (back ** 2).sum(-1) + eb
    ref = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1) & agree & ~edge
    got = reliability(back, fwd)
    inner = (slice(1, -1), slice(1, -1))  # np.gradient is one-sided on the outermost pixels
    assert (got[inner] == ref[inner]).mean() > 0.999 and not got[42:58, 52:68].any() and ref.mean() > 0.5


def test_flow_on_a_smaller_copy_is_scaled_back_up():
    prev, cur = vf.pan_frames(2, size=(256, 160), step=4)
    pair = FlowEstimator("fast", max_side=128)(prev, cur)
    assert pair.flow.shape == (160, 256, 2) and pair.reliable.shape == (160, 256) and not pair.cut
    dx, dy = np.median(pair.flow[pair.reliable], axis=0)
    assert abs(dx - 4) < 0.4 and abs(dy) < 0.4 and not pair.reliable[:, -4:].any()


def test_warp_np_convention_matches_grid_sample():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    img = rng.random((12, 16, 3), dtype=np.float32)
    flow = (rng.random((12, 16, 2), dtype=np.float32) - 0.5) * 3
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    grid = np.stack([2 * (xs + flow[..., 0]) / (w - 1) - 1, 2 * (ys + flow[..., 1]) / (h - 1) - 1], -1)
    ref = torch.nn.functional.grid_sample(torch.from_numpy(img).permute(2, 0, 1)[None],
                                          torch.from_numpy(grid.astype(np.float32))[None], mode="bilinear",
                                          padding_mode="border", align_corners=True)[0].permute(1, 2, 0).numpy()
    assert np.abs(warp_np(img, flow) - ref).max() < 1e-3


def test_scene_cut_detected_and_restarts_the_chain(tmp_path):
    stream = list(with_flow(iter_frames(vf.cut_clip(tmp_path / "cut.mp4", n=12, cut_at=6))))
    assert stream[0][1] is None and [f.index for f, _ in stream] == list(range(12))
    pairs = [p for _, p in stream[1:]]
    assert [i + 1 for i, p in enumerate(pairs) if p.cut] == [6]
    assert not pairs[5].reliable.any() and all(p.reliable.mean() > 0.5 for p in pairs if not p.cut)
