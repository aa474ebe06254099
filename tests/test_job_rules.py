"""Job rules: per-output parameter hashes on rerun, --no-* flags over the job file, PNG colour-key alpha."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from dreamfleet.cli import build_parser, main
from dreamfleet.engine.config import make_config
from dreamfleet.engine.imageio import load_image, read_metadata
from dreamfleet.options import config_from_args

from conftest import random_rgb

FAST = ["--preset", "classic", "--layer", "inception3a", "--octaves", "2", "--iterations", "1", "--max-side", "64",
        "--jitter", "4", "--no-progress"]


def _report(out: Path) -> dict:
    return json.loads((out / "dreamfleet-report.json").read_text())


def test_partial_overwrite_does_not_bless_older_outputs(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(random_rgb(48, 64, seed=len(name))).save(src / name)
    assert main(["dream", str(src), "-o", str(out), *FAST]) == 0
    # a partial --overwrite with new parameters: only a.png is redone (b.png keeps the old parameters)
    assert main(["dream", str(src / "a.png"), "-o", str(out), *FAST, "--step", "3", "--overwrite"]) == 0
    new = make_config("classic", overrides=dict(layer="inception3a", octaves=2, iterations=1, max_side=64, jitter=4,
                                                step=3.0)).param_hash()
    assert read_metadata(out / "b.png")["param_hash"] != new
    # the rerun with the new parameters redoes b.png instead of skipping it as "output exists"
    assert main(["dream", str(src), "-o", str(out), *FAST, "--step", "3"]) == 0
    totals = _report(out)["totals"]
    assert (totals["done"], totals["skipped"]) == (1, 1)
    assert {read_metadata(out / n)["param_hash"] for n in ("a.png", "b.png")} == {new}
    # an output folder not claimed by this job, holding another job's output: refused, not overwritten
    other = tmp_path / "other"
    shutil.copytree(out, other)
    shutil.rmtree(other / ".dreamfleet")
    capsys.readouterr()
    assert main(["dream", str(src), "-o", str(other), *FAST]) == 2
    assert "made with other parameters" in capsys.readouterr().err


def test_no_flags_turn_off_job_file_booleans(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text("overwrite = true\nrandom-weights = true\nreproducible = true\nchannels-last = true\n")
    parser = build_parser()
    base = ["dream", "x.png", "-o", "out", "--config", str(job)]
    cfg = config_from_args(parser.parse_args(base))
    assert cfg.overwrite and cfg.random_weights and cfg.reproducible and cfg.channels_last
    flags = ["--no-overwrite", "--no-random-weights", "--no-reproducible", "--no-channels-last"]
    cfg = config_from_args(parser.parse_args(base + flags))
    assert not (cfg.overwrite or cfg.random_weights or cfg.reproducible or cfg.channels_last)
    assert config_from_args(parser.parse_args(["dream", "x.png", "-o", "o", "--overwrite"])).overwrite


def test_png_colour_key_transparency_is_kept(tmp_path):
    rgb = random_rgb(32, 32)
    rgb[:8] = (10, 20, 30)  # the colour key
    Image.fromarray(rgb).save(tmp_path / "rgb.png", transparency=(10, 20, 30))
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png", transparency=10)
    for name in ("rgb.png", "gray.png"):
        img = load_image(tmp_path / name, 10**6)
        assert img.alpha is not None, name
        assert img.alpha[:8].max() == 0.0 and img.alpha[8:].mean() > 0.9, name
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(tmp_path / "rgb.png", src / "key.png")
    assert main(["dream", str(src), "-o", str(out), *FAST]) == 0
    with Image.open(out / "key.png") as im:
        assert im.mode == "RGBA" and np.asarray(im)[:8, :, 3].max() == 0
