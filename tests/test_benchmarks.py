"""Smoke test of the benchmark harness: a tiny profile runs and writes well-formed rows (nothing is timed as a check)."""
from __future__ import annotations

import json

import pytest
import torch

from dreamfleet.benchmarks import report
from dreamfleet.benchmarks.profiles import get_profile
from dreamfleet.benchmarks.run import run_benchmarks

ROW_FIELDS = ("case", "job", "impl", "model", "backend", "precision", "batch_size", "size", "octaves", "iterations",
              "images_per_s", "ms_per_step", "time_s_median", "time_s_all", "repeats", "warmup", "gflop_per_image",
              "achieved_tflops", "peak_tflops", "peak_source", "fraction_of_peak", "peak_rss_mib", "config",
              "backend_info", "env", "run_id", "profile", "label", "timestamp")


def test_smoke_profile_writes_rows_table_and_ratio(tmp_path):
    rows = run_benchmarks("smoke", device="cpu", out_dir=tmp_path, chart=False, bounds=False)
    assert [r["status"] for r in rows] == ["ok"] * len(rows), [r.get("reason") for r in rows]
    written = [json.loads(line) for line in (tmp_path / "cpu_smoke.jsonl").read_text().splitlines()]
    assert len(written) == len(rows) == 3
    for row in written:
        missing = [f for f in ROW_FIELDS if f not in row]
        assert not missing, missing
        assert row["images_per_s"] > 0 and row["gflop_per_image"] > 0 and row["peak_rss_mib"] > 0
        assert row["env"]["torch"] == torch.__version__ and row["env"]["torch_threads"] >= 1
        assert "load_avg_1_5_15" in row["env"]
    seed = next(r for r in written if r["impl"] == "seed")
    engine = next(r for r in written if r["impl"] == "dreamfleet" and r["job"] == seed["job"])
    assert engine["speedup_vs_seed"] > 0 and engine["seed_case"] == seed["case"]
    assert seed["gflop_per_image"] == engine["gflop_per_image"]  # same job, same FLOPs
    table = (tmp_path / "latest.md").read_text()
    assert "| images/s |" in table and "seed (article)" in table


def test_seed_baseline_computes_what_the_seed_preset_computes():
    from dreamfleet.backends import create_backend
    from dreamfleet.benchmarks.seed_baseline import SeedDream, load_vgg16
    from dreamfleet.engine.build import build_dream_model
    from dreamfleet.engine.config import make_config
    from dreamfleet.engine.loop import dream_tensor

    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    cfg = make_config("seed", overrides=dict(octaves=2, iterations=2, random_weights=True, device="cpu"))
    dm = build_dream_model(cfg.model, cfg.layer, cfg.objective, random_weights=True)
    ours = dream_tensor(create_backend(dm, cfg, torch.device("cpu")), x, cfg, dm.spec, ["a"])
    seed = SeedDream(load_vgg16(random_weights=True), 30, iterations=2, lr=0.1, num_octaves=2).dream(x)
    assert (ours - x).abs().max() > 1e-3  # something was dreamed
    torch.testing.assert_close(ours, seed, atol=2e-4, rtol=0)


def test_user_mistakes_name_the_valid_options(tmp_path):
    with pytest.raises(ValueError, match="valid: quick, full, smoke"):
        get_profile("fast", torch.device("cpu"))
    with pytest.raises(ValueError, match="valid: eager, compile"):
        run_benchmarks("smoke", device="cpu", out_dir=tmp_path, backends=("tensorrtx",))
    with pytest.raises(ValueError, match="matches no case"):
        run_benchmarks("smoke", device="cpu", out_dir=tmp_path, only="no-such-case")


def test_table_and_chart_include_cluster_rows(tmp_path):
    run = {"bench": "cluster_cpu", "images": 8, "config": {"model": "bvlc_googlenet"},
           "in_process": {"images_per_s": 2.0, "images_per_s_steady": 2.2, "wall_s": 4.0},
           "cluster_2w": {"images_per_s": 3.0, "images_per_s_steady": 3.74, "wall_s": 2.7},
           "ratio_cluster_2w_vs_in_process": 1.7}
    (tmp_path / "cluster_cpu.jsonl").write_text(json.dumps(run) + "\n")
    text = report.write_table(tmp_path).read_text()
    assert "cluster_cpu.jsonl" in text and "| cluster_2w |" in text and "1.7" in text
    rows = report.cluster_rows(tmp_path / "cluster_cpu.jsonl")
    assert [r["case"] for r in rows] == ["in_process", "cluster_2w"] and rows[1]["images_per_s"] == 3.74


def test_pipeline_bench_smoke_row(tmp_path):
    from dreamfleet.benchmarks.pipeline_bench import format_row, run_pipeline_bench

    row = run_pipeline_bench(images=3, repeats=1, device_ms=0.5, results=tmp_path / "p.jsonl")
    assert row["simulated_device"] and set(row["images_per_s"]) >= {"naive", "host_only", "balanced", "device"}
    assert 0 < row["efficiency"] and row["decode_psnr"]["min_db"] > 30
    assert {"decode", "resize", "loop", "encode", "write"} <= set(row["host_ms_per_image"])
    assert "SIMULATED" in format_row(row) and (tmp_path / "p.jsonl").read_text().count("\n") == 1


def test_tiled_pipeline_bench_smoke_row(tmp_path):
    from dreamfleet.benchmarks.tiled_pipeline import format_row, run_tiled_pipeline_bench

    row = run_tiled_pipeline_bench(images=2, repeats=1, results=tmp_path / "t.jsonl", size=(800, 640))
    assert row["simulated_device"] and row["tiles_per_image"] == 4  # 800x640: two 640 px windows, 2 iterations
    assert 0 < row["efficiency"] <= 1.2 and (tmp_path / "t.jsonl").exists()
    assert "SIMULATED" in format_row(row)


def test_bench_defaults_work_outside_a_checkout():
    from dreamfleet.benchmarks.run import RESULTS_DIR, SAMPLES, sample_dirs

    assert not RESULTS_DIR.is_absolute()  # results land under the current directory, not in the package
    assert any((d / s).is_file() for d in sample_dirs() for s in SAMPLES)


def test_video_bench_row_prints_every_round_and_both_targets():
    """The video bench's ratios and printout from a made-up row (the bench itself needs the real weights)."""
    from dreamfleet.benchmarks.video_bench import CASES, _ratios, format_row

    secs = [{"lockstep": 10.0, "one_clip": 4.0, "sequential": 12.0, "images": 9.0},
            {"lockstep": 11.0, "one_clip": 5.0, "sequential": 14.0, "images": 10.0}]
    rounds = [{"round": r, "order": list(CASES), "seconds": s, "cpu_seconds": s, **_ratios(s), "cpu": _ratios(s),
               "host_ms_per_frame": {"lockstep": {"decode": 1.0, "flow": 2.0, "write": 3.0}, "images": {}}}
              for r, s in enumerate(secs)]
    assert _ratios(secs[0]) == {"lockstep_vs_images": 0.9, "lockstep_vs_one_clip_time": 2.5}
    fl = {"frames": 16, "size": [256, 144], "coherent": {"flicker": 1.0}, "independent": {"flicker": 2.0},
          "flicker_ratio": 0.5, "strength_ratio": 1.2}
    row = {"clips": 3, "frames_per_clip": 48, "size": [96, 64], "environment": {"device": "cpu"}, "rounds": rounds,
           "frames_per_s": {"lockstep": 1.0, "sequential": 1.0, "one_clip": 1.0}, "images_per_s": 1.0,
           "lockstep_vs_images": 0.9, "lockstep_vs_one_clip_time": 2.2, "flicker": fl}
    text = format_row(row)
    assert "round 0:" in text and "round 1:" in text and "2.20x the time of one clip" in text
    assert "0.91x" in text and "flow 2.0" in text  # round 1's lockstep / images; the stage timings
