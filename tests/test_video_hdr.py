"""10-bit and HDR sources (engine/video/tonemap.py): a 10-bit PQ / BT.2020 clip made with PyAV (libx264
yuv420p10le) comes back tone-mapped close to the SDR photo it was graded from, far closer than a naive
8-bit truncation; 8-bit SDR clips are unchanged bit for bit; the report says what the source was."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
from video_fixtures import pan_clip, pan_frames  # noqa: E402

from dreamfleet.backends import create_backend  # noqa: E402
from dreamfleet.engine.config import make_config  # noqa: E402
from dreamfleet.engine.job import run_job  # noqa: E402
from dreamfleet.engine.video import tonemap  # noqa: E402
from dreamfleet.engine.video.decode import Decoder  # noqa: E402
from dreamfleet.engine.video.probe import probe_video  # noqa: E402

SIZE = (96, 64)  # W, H
M709_TO_2020 = np.linalg.inv(tonemap._M2020_TO_709.astype(np.float64))


def hlg_oetf(e: np.ndarray) -> np.ndarray:
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    e = np.clip(e, 0, 1)
    return np.where(e <= 1 / 12, np.sqrt(3 * e), a * np.log(np.maximum(12 * e - b, 1e-12)) + c)


def graded(sdr: np.ndarray, transfer: str) -> np.ndarray:
    """An SDR BT.709 photo [H, W, 3] uint8 as an HDR signal [H, W, 3] uint16: SDR white = 203 cd/m2 (BT.2408)."""
    lin = (sdr / 255.0) ** 2.4 @ M709_TO_2020.T  # linear BT.2020, SDR white 1.0
    if transfer == "pq":
        signal = tonemap.pq_inverse(lin * 203.0)
    else:  # HLG: the scene light whose OOTF on a 1000 cd/m2 display gives the same 203 cd/m2 white
        ys = np.maximum(lin @ np.array([0.2627, 0.6780, 0.0593]), 1e-12)
        scene_y = (ys * 203.0 / 1000.0) ** (1 / 1.2)
        signal = hlg_oetf(lin * (scene_y / ys)[..., None])
    return np.rint(np.clip(signal, 0, 1) * 65535).astype(np.uint16)


def write_10bit(path: Path, frames: list[np.ndarray], trc: int, primaries: int = 9, matrix: int = 9) -> Path:
    """10-bit H.264 (yuv420p10le) from RGB48 frames, tagged ``trc`` / ``primaries`` / ``matrix``."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p10le"
        vs.options = {"crf": "4", "preset": "ultrafast"}
        cc = vs.codec_context
        cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = primaries, trc, matrix, 1
        for t, rgb16 in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(rgb16, format="rgb48le")
            vf = vf.reformat(format="yuv420p10le", dst_colorspace="BT2020" if matrix == 9 else "ITU709",
                             dst_color_range="MPEG")
            vf.color_primaries, vf.color_trc, vf.colorspace, vf.color_range = primaries, trc, matrix, 1
            vf.pts, vf.time_base = t, Fraction(1, 25)
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
    return path


def naive(path: Path) -> np.ndarray:
    """What an 8-bit pipeline without care makes of the first frame: RGB24 straight from the 10-bit YUV."""
    with av.open(str(path)) as c:
        return next(c.decode(video=0)).reformat(format="rgb24").to_ndarray()


def test_eetf_curve():
    nits = np.array([0.0, 1.0, 18.0, 50.0, 85.0, 203.0, 500.0, 1000.0, 4000.0])
    out = tonemap.eetf(nits)
    assert np.allclose(out[:5], nits[:5], rtol=1e-3, atol=1e-3)  # identity below the knee (~90 cd/m2)
    assert np.all(np.diff(out) >= 0) and abs(out[-2] - 203.0) < 0.01 and abs(out[-1] - 203.0) < 0.01
    assert 120 < out[5] < 203  # diffuse white compressed, not clipped
    gray = np.full((1, 1, 3), 0.75, np.float64)  # HLG reference white and PQ 203 cd/m2: one SDR value
    hlg = tonemap.ToneMapper("hlg")(np.rint(gray * 65535).astype(np.uint16))
    pq = tonemap.ToneMapper("pq")(np.rint(tonemap.pq_inverse(np.full((1, 1, 3), 203.0)) * 65535).astype(np.uint16))
    assert abs(int(hlg[0, 0, 0]) - int(pq[0, 0, 0])) <= 2 and 215 < int(pq[0, 0, 0]) < 245


@pytest.mark.parametrize("transfer,trc", [("pq", 16), ("hlg", 18)])
def test_hdr_clip_tone_mapped_not_washed_out(tmp_path, transfer, trc):
    sdr = pan_frames(3, SIZE)
    clip = write_10bit(tmp_path / f"{transfer}.mp4", [graded(f, transfer) for f in sdr], trc)
    info = probe_video(clip)
    assert info.pix_fmt == "yuv420p10le" and info.color["bit_depth"] == 10 and info.color["primaries"] == "bt2020"
    assert info.color["transfer"] == {"pq": "smpte2084", "hlg": "arib-std-b67"}[transfer]
    assert info.color["tone_mapped"] and info.color["hdr"]
    frames = [f.rgb for f in Decoder(clip)]
    assert len(frames) == 3 and frames[0].dtype == np.uint8 and frames[0].shape == (SIZE[1], SIZE[0], 3)
    src, got, flat = sdr[0].astype(float), frames[0].astype(float), naive(clip).astype(float)
    err, naive_err = np.abs(got - src).mean(), np.abs(flat - src).mean()
    assert err < 12 and err < 0.4 * naive_err, (err, naive_err)  # close to the grade; truncation is far off
    dark = src.mean(2) < 100  # below the knee: reproduced, not lifted to grey
    assert np.abs(got - src)[dark].mean() < 6, np.abs(got - src)[dark].mean()
    assert got.std() > 0.8 * src.std() and flat.std() < 0.8 * src.std()  # contrast kept vs the flat naive look


def test_10bit_sdr_is_rounded_and_8bit_sdr_unchanged(tmp_path):
    sdr = pan_frames(2, SIZE)
    clip = write_10bit(tmp_path / "sdr10.mp4", [f.astype(np.uint16) * 257 for f in sdr], trc=1, primaries=1, matrix=1)
    info = probe_video(clip)
    assert info.color["bit_depth"] == 10 and not info.color["tone_mapped"] and info.color["transfer"] == "bt709"
    got = next(iter(Decoder(clip))).rgb.astype(int)
    assert np.abs(got - sdr[0]).mean() < 2.0
    eight = pan_clip(tmp_path / "pan.mp4", n=4, audio=False)
    assert probe_video(eight).color == {**probe_video(eight).color, "bit_depth": 8, "tone_mapped": False}
    with av.open(str(eight)) as c:  # the RGB24 path as it was before tonemap existed
        before = [vf.reformat(format="rgb24", src_colorspace="ITU601").to_ndarray() for vf in c.decode(video=0)]
    dec = Decoder(eight)
    after = [f.rgb for f in dec]
    assert dec.mapper is None and len(after) == len(before) == 4
    assert all(np.array_equal(a, b) for a, b in zip(after, before))  # bit for bit


def test_report_records_source_color_and_output_stays_sdr(tmp_path):
    clip = write_10bit(tmp_path / "hdr.mp4", [graded(f, "pq") for f in pan_frames(2, (64, 48))], trc=16)
    cfg = make_config(None, None, dict(model="googlenet", random_weights=True, max_side=64, iterations=1, octaves=1,
                                       batch_size=2))
    rep = run_job(cfg, [str(clip)], tmp_path / "out", create_backend, progress=False)
    (rec,) = rep.records if rep.records else [None]
    color = rec.video["source_color"]
    assert rec.status == "done" and color["tone_mapped"] and color["transfer"] == "smpte2084"
    assert color["conversion"].startswith("BT.2390 EETF")
    with av.open(str(tmp_path / "out" / "hdr.mp4")) as c:
        cc = c.streams.video[0].codec_context
        assert cc.name == "h264" and cc.pix_fmt == "yuv420p" and (cc.color_trc, cc.color_primaries) == (1, 1)
