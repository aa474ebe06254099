"""DreamStage's per-batch planning in this process (no Ray executor): configs, names, skips, refusals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from ray_fixtures import make_images, tiny_config

from dreamfleet.ray_data import DreamStage, load_stage_config, mirror_rel


def test_config_forms_and_output(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('output = "dreams"\nmodel = "googlenet"\nrandom-weights = true\ncpus-per-worker = 4\n')
    cfg, out = load_stage_config(str(job))
    assert out == str(tmp_path / "dreams") and cfg.random_weights
    cfg2, out2 = load_stage_config({"model": "googlenet", "random-weights": True, "output": "s3://b/x"})
    assert cfg2.param_hash() == cfg.param_hash() and out2 == "s3://b/x"
    assert load_stage_config(cfg, "o")[0] is cfg
    with pytest.raises(ValueError, match="needs an output"):
        load_stage_config({"random_weights": True})
    with pytest.raises(ValueError, match="unknown config key"):
        load_stage_config({"octavez": 3}, "o")


def test_output_names_mirror_the_input_path():
    assert mirror_rel("/data/a/x.jpg", "/data") == "a/x.jpg"
    assert mirror_rel("/data/a/x.jpg", None) == "data/a/x.jpg"
    assert mirror_rel("s3://bucket/k/x.jpg", None) == "bucket/k/x.jpg"
    assert mirror_rel("s3://bucket/k/x.jpg", "s3://bucket") == "k/x.jpg"


def test_batch_rows_skips_duplicates_and_foreign_outputs(tmp_path):
    paths = [str(p) for p in make_images(tmp_path / "in", 3)]
    (tmp_path / "in" / "bad.png").write_bytes(b"nope")
    out = tmp_path / "out"
    stage = DreamStage(tiny_config(device="cpu"), str(out), input_root=str(tmp_path / "in"))
    batch = {"path": np.array(paths + [paths[0], str(tmp_path / "in" / "bad.png")]), "k": np.arange(5)}
    res = stage(batch)
    assert list(res["status"]) == ["done"] * 4 + ["failed"] and list(res["k"]) == list(range(5))
    assert res["output"][0] == res["output"][3] == str(out / "img00.png")  # a repeated path: dreamed once
    again = stage({"path": np.array(paths)})
    assert list(again["status"]) == ["skipped"] * 3
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(out / "img01.png")  # not ours now
    foreign = stage({"path": np.array(paths[1:2])})
    assert foreign["status"][0] == "failed" and "other parameters" in foreign["reason"][0]
    stage.close()
    with pytest.raises(ValueError, match="other parameters"):  # a folder claimed by another job is refused
        DreamStage(tiny_config(device="cpu", iterations=2), str(out))
    assert Path(out / ".dreamfleet" / "job.json").exists()


def test_relative_root_matches_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert mirror_rel(str(tmp_path / "in" / "a" / "x.png"), "in") == "a/x.png"
