"""Odd inputs through the CLI, the report, resume, atomic outputs and folder safety."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamfleet.cli import main
from dreamfleet.engine.imageio import read_metadata
from dreamfleet.engine.inputs import discover, output_path
from dreamfleet.engine.report import read_records

from conftest import random_rgb

FAST = ["--preset", "classic", "--layer", "inception3a", "--octaves", "2", "--iterations", "1", "--max-side", "64",
        "--jitter", "4", "--batch-size", "4", "--no-progress"]


def _make_inputs(root: Path) -> dict[str, str]:
    """Every odd kind of input; returns {relative name: expected status}."""
    root.mkdir(parents=True, exist_ok=True)
    rgb = random_rgb(48, 64)
    Image.fromarray(rgb).save(root / "rgb.jpg")
    Image.fromarray(rgb).save(root / "same.png")
    Image.fromarray(rgb).save(root / "same.tif")  # differs only in extension from same.png
    Image.fromarray(rgb[..., 0]).save(root / "gray.png")  # L
    Image.fromarray(np.dstack([rgb[..., :1], rgb[..., 1:2]]), "LA").save(root / "gray_alpha.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    Image.fromarray(rgb).convert("P").save(root / "palette.gif")
    frames = [Image.fromarray(random_rgb(48, 64, seed=s)).convert("P") for s in range(3)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(root / "deep16.png")  # I;16
    Image.fromarray(rgb).save(root / "img.webp")
    Image.fromarray(rgb).save(root / "img.bmp")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(random_rgb(40, 80)).save(root / "rotated.jpg", exif=exif.tobytes())
    (root / "sub").mkdir(exist_ok=True)
    Image.fromarray(rgb).save(root / "sub" / "nested.png")
    # the bad ones
    (root / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(random_rgb(64, 64)).save(buf, "PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "notimage.jpg").write_text("this is not an image\n")
    Image.fromarray(random_rgb(600, 600)).save(root / "huge.png")  # over --max-pixels below
    good = ["rgb.jpg", "same.png", "same.tif", "gray.png", "gray_alpha.png", "alpha.png", "palette.gif", "anim.gif",
            "cmyk.jpg", "deep16.png", "img.webp", "img.bmp", "rotated.jpg", "sub/nested.png"]
    bad = ["empty.png", "truncated.png", "notimage.jpg", "huge.png"]
    return {**{g: "done" for g in good}, **{b: "failed" for b in bad}}


def _report(out: Path) -> dict:
    return json.loads((out / "dreamfleet-report.json").read_text())


def test_odd_inputs_resume_and_report(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    expected = _make_inputs(src)
    code = main(["dream", str(src), "-o", str(out), *FAST, "--max-pixels", "200000"])
    assert code == 1  # some images failed
    rep = _report(out)
    status = {r["rel"]: r for r in read_records(out, run=rep["run"])}
    assert {k: v["status"] for k, v in status.items()} == expected
    reasons = {k: status[k]["reason"] for k, v in expected.items() if v == "failed"}
    assert "empty file" in reasons["empty.png"]
    assert "cannot decode" in reasons["truncated.png"] or "truncated" in reasons["truncated.png"]
    assert "not an image" in reasons["notimage.jpg"]
    assert "over the limit" in reasons["huge.png"]
    assert rep["totals"]["done"] == 14 and rep["totals"]["failed"] == 4 and rep["totals"]["images_per_s"] > 0
    assert status["rgb.jpg"]["timings"]["dream"] > 0

    # outputs mirror inputs; formats kept; alpha re-attached; EXIF orientation applied
    assert (out / "same.png").exists() and (out / "same.tif").exists() and (out / "sub" / "nested.png").exists()
    with Image.open(out / "alpha.png") as im:
        assert im.mode == "RGBA" and abs(np.asarray(im)[..., 3].astype(int).mean() - 128) <= 1
    with Image.open(out / "gray_alpha.png") as im:
        assert im.mode == "RGBA"
    with Image.open(out / "rotated.jpg") as im:
        assert im.size[1] > im.size[0]  # 80x40 stored, 40x80 displayed -> portrait
    with Image.open(out / "anim.gif") as im:
        assert getattr(im, "n_frames", 1) == 1
    meta = read_metadata(out / "rgb.jpg")
    assert meta["params"]["model"] == "bvlc_googlenet" and meta["input"] == "rgb.jpg" and "param_hash" in meta
    assert read_metadata(out / "same.png")["params"]["iterations"] == 1
    assert not list(out.rglob("*.dreamfleet-tmp"))

    # resume: a second run skips everything written, still reports the bad inputs
    mtime = (out / "rgb.jpg").stat().st_mtime_ns
    (out / ".stale.png.1234.dreamfleet-tmp").write_bytes(b"junk")  # left by a killed run
    code = main(["dream", str(src), "-o", str(out), *FAST, "--max-pixels", "200000"])
    rep = _report(out)
    assert code == 1 and rep["totals"]["skipped"] == 14 and rep["totals"]["done"] == 0
    assert (out / "rgb.jpg").stat().st_mtime_ns == mtime
    assert not list(out.rglob("*.dreamfleet-tmp"))

    # a partial rerun: delete one output, only it is redone
    (out / "gray.png").unlink()
    main(["dream", str(src), "-o", str(out), *FAST, "--max-pixels", "200000"])
    rep = _report(out)
    assert rep["totals"]["done"] == 1 and rep["totals"]["skipped"] == 13


def test_other_parameters_are_refused_then_overwrite(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(random_rgb(48, 64)).save(src / "a.png")
    assert main(["dream", str(src), "-o", str(out), *FAST]) == 0
    assert main(["dream", str(src), "-o", str(out), *FAST, "--step", "3"]) == 2
    assert "other parameters" in capsys.readouterr().err
    assert main(["dream", str(src), "-o", str(out), *FAST, "--step", "3", "--overwrite"]) == 0
    assert _report(out)["totals"]["done"] == 1


def test_output_paths_stay_inside(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="leave the output folder"):
        output_path(out, "../evil.png")
    with pytest.raises(ValueError, match="leave the output folder"):
        output_path(out, "/etc/evil.png")
    assert output_path(out, "a/b.png") == (out / "a" / "b.png").resolve()
    assert output_path(out, "a.png", "jpeg").name == "a.png.jpg"


def test_discover_globs_several_roots_and_skips_output(tmp_path):
    for d in ("p", "q"):
        (tmp_path / d).mkdir()
        Image.fromarray(random_rgb(32, 32)).save(tmp_path / d / "x.png")
    (tmp_path / "p" / "notes.txt").write_text("skip me")
    items, problems = discover([str(tmp_path / "p"), str(tmp_path / "q"), str(tmp_path / "nope")])
    assert [i.rel for i in items] == ["p/x.png", "q/x.png"]
    assert problems == [(str(tmp_path / "nope"), "no such file or folder")]
    out = tmp_path / "p" / "dreams"
    out.mkdir()
    Image.fromarray(random_rgb(32, 32)).save(out / "x.png")
    items, _ = discover([str(tmp_path / "p")], out_dir=out)
    assert [i.rel for i in items] == ["x.png"]
    items, _ = discover([str(tmp_path / "*" / "*.png")])
    assert [i.rel for i in items] == ["p/x.png", "q/x.png"]


def test_second_concurrent_run_refused(tmp_path):
    from dreamfleet.engine.job import JobLocked, OutputLock

    with OutputLock(tmp_path):
        with pytest.raises(JobLocked, match="another dreamfleet run"):
            with OutputLock(tmp_path):
                pass
    with OutputLock(tmp_path):  # released
        pass


def test_config_file_and_flags(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(random_rgb(40, 40)).save(src / "a.png")
    job = tmp_path / "job.toml"
    job.write_text('preset = "classic"\nlayer = "inception3a"\noctaves = 1\niterations = 1\nmax-side = 64\n'
                   'step = 2.0\n')
    assert main(["dream", str(src), "-o", str(out), "--config", str(job), "--iterations", "2", "--no-progress"]) == 0
    params = read_metadata(out / "a.png")["params"]
    assert params["iterations"] == 2 and params["step"] == 2.0 and params["octaves"] == 1
    assert params["model"] == "bvlc_googlenet"


def test_glob_base_is_stable_and_roots_with_one_name_stay_apart(tmp_path):
    (tmp_path / "photos" / "2024").mkdir(parents=True)
    Image.fromarray(random_rgb(32, 32)).save(tmp_path / "photos" / "2024" / "a.jpg")
    (tmp_path / "photos" / "2024" / "notes.txt").write_text("not an image")
    pattern = str(tmp_path / "photos" / "**" / "*")
    items, problems = discover([pattern])
    assert [i.rel for i in items] == ["2024/a.jpg"] and not problems  # the text file is not an input
    (tmp_path / "photos" / "2025").mkdir()
    Image.fromarray(random_rgb(32, 32)).save(tmp_path / "photos" / "2025" / "b.jpg")
    items, _ = discover([pattern])
    assert [i.rel for i in items] == ["2024/a.jpg", "2025/b.jpg"]  # earlier paths unchanged
    for d in ("x/photos", "y/photos"):
        (tmp_path / d).mkdir(parents=True)
        Image.fromarray(random_rgb(32, 32)).save(tmp_path / d / "c.png")
    items, problems = discover([str(tmp_path / "x" / "photos"), str(tmp_path / "y" / "photos")])
    assert [i.rel for i in items] == ["photos-2/c.png", "photos/c.png"] and not problems


def test_output_folder_holding_the_inputs_is_refused(tmp_path, capsys):
    Image.fromarray(random_rgb(40, 40)).save(tmp_path / "a.png")
    assert main(["dream", str(tmp_path), "-o", str(tmp_path), *FAST]) == 2
    assert "inside the output folder" in capsys.readouterr().err
