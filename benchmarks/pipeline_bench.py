"""``dreamfleet bench --pipeline``: the host pipeline against a simulated device.

Runs the real job path (``run_job``: plan, decode threads, the octave loop, writer threads,
report) on generated 1600x1200 JPEG photos with a working size of 160 px and JPEG out, one
torch thread, with ``SimulatedDeviceBackend`` in place of a device. Cases, timed in
alternating rounds (medians) so they see the same machine load:

* ``naive``: a plain one-thread Pillow loop (open, convert, resize, save JPEG q95);
* ``host_only``: the job with a device that costs nothing (the host pipeline's own rate);
* ``balanced``: the job with a device as slow as the host (per-image device time = 1 / host_only);
* ``balanced_inline``: the same with ``io_threads=-1`` (no overlap: decode and write inline);
* ``host_only_inline``: the free device with ``io_threads=-1``: the fast decode path alone, one
  thread like the naive loop (on a loaded machine a process with more threads gets more CPU).

It reports efficiency = achieved / min(host-only, device-only), host-only / naive, the host
time per image of each stage (decode, resize, loop bookkeeping, encode, write) and the PSNR
of the fast decode path's working images against the float antialiased path. Every device
figure is **simulated**. One JSON row goes to ``benchmarks/results/pipeline_cpu.jsonl``.
"""
from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .hardware import git_commit
from .rows import append_rows
from .simdevice import SimulatedDeviceBackend, per_image_time

log = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline_cpu.jsonl"
SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
DEVICES = {"h100-bf16": 989.0, "a100-bf16": 312.0, "l4-bf16": 121.0}  # dense peak TFLOP/s (vendor sheets)


def make_photos(folder: Path, n: int, size: tuple[int, int] = (1600, 1200)) -> list[Path]:
    """n JPEG photos (q90) at ``size`` made from the sample photos (cropped, flipped, upscaled)."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [p for p in sorted(SAMPLES.glob("*")) if p.suffix in (".png", ".jpg")]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as im:
            im = im.convert("RGB")
            w, h = im.size
            dx, dy = int(rng.integers(0, w // 8 + 1)), int(rng.integers(0, h // 8 + 1))
            im = im.crop((dx, dy, w - w // 8 + dx, h - h // 8 + dy)).resize(size, Image.Resampling.BICUBIC)
            if i % 2:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            p = folder / f"photo{i:03d}.jpg"
            im.save(p, quality=90)
            paths.append(p)
    return paths


def naive_loop(paths: list[Path], out: Path, wh: tuple[int, int]) -> float:
    """images/s of the plain one-thread Pillow loop: decode, resize, encode JPEG q95, write."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            im.convert("RGB").resize(wh, Image.Resampling.BILINEAR).save(out / p.name, "JPEG", quality=95)
    return len(paths) / (time.perf_counter() - t0)


def decode_psnr(paths: list[Path], hw: tuple[int, int]) -> dict:
    """PSNR (dB, peak 1) of load_working_image vs the float antialiased path, at the working size."""
    from dreamfleet.engine.imageio import load_image, load_working_image
    from dreamfleet.engine.sizing import to_tensor

    vals = []
    for p in paths:
        new = load_working_image(p, hw, 10**9).pixels
        ref = to_tensor(load_image(p, 10**9).rgb, hw)
        vals.append(float(10 * torch.log10(1.0 / ((new - ref) ** 2).mean())))
    return {"mean_db": round(statistics.mean(vals), 2), "min_db": round(min(vals), 2), "images": len(vals)}


def _job(cfg, src: Path, out: Path, step_seconds: float) -> tuple[float, dict]:
    from dreamfleet.engine.job import run_job

    made: list[SimulatedDeviceBackend] = []

    def factory(dm, cfg, device):
        made.append(SimulatedDeviceBackend(per_image_time(step_seconds)))
        return made[-1]

    shutil.rmtree(out, ignore_errors=True)
    rep = run_job(cfg, [str(src)], out, factory, progress=False)
    if rep.counts()["done"] != len(rep.records):
        raise RuntimeError(f"pipeline bench job failed: {rep.counts()}")
    stages = dict(rep.extra.get("host_ms_per_image", {}))
    if step_seconds > 0 and made:  # simulated device idle while the host was late, share of the work time
        stages["device_idle_share"] = round(made[0].idle_seconds / rep.work_seconds, 3)
        stages["device_idle_share_batch_start"] = round(made[0].idle_first_step / rep.work_seconds, 3)
    return rep.counts()["done"] / rep.work_seconds, stages


def run_pipeline_bench(images: int = 48, repeats: int = 3, device_ms: float | None = None,
                       device: str | None = None, io_threads: int = 0, results: Path = RESULTS) -> dict:
    from dreamfleet.engine.config import config_to_dict, make_config
    from dreamfleet.engine.report import environment

    torch.set_num_threads(1)
    cfg = make_config(None, None, dict(model="bvlc_googlenet", max_side=160, octaves=2, iterations=2, batch_size=8,
                                       device="cpu", io_threads=io_threads, overwrite=True))
    steps = cfg.octaves * cfg.iterations
    root = Path(tempfile.mkdtemp(prefix="dreamfleet-pipeline-bench-"))
    row: dict = {"bench": "pipeline", "simulated_device": True, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "images": images, "input": "1600x1200 JPEG q90", "working_size": "160x128", "output": "JPEG q95",
                 "config": config_to_dict(cfg), "environment": environment(), "git_commit": git_commit(),
                 "loadavg_before": os.getloadavg()}
    try:
        paths = make_photos(root / "in", images)
        row["decode_psnr"] = decode_psnr(paths[: min(len(paths), 12)], (128, 160))
        runs: dict[str, list] = {k: [] for k in ("naive", "host_only", "host_only_inline", "balanced",
                                                  "balanced_inline", "device")}
        stages: list[dict] = []
        idle: list[dict] = []  # balanced runs: simulated device idle shares
        inline = make_config(None, None, dict(config_to_dict(cfg), io_threads=-1))
        _job(cfg, root / "in", root / "warm", 0.0)  # warm-up: imports, allocator, page cache
        for r in range(repeats):
            runs["naive"].append(naive_loop(paths, root / "naive", (160, 128)))
            host, st = _job(cfg, root / "in", root / "host", 0.0)
            runs["host_only"].append(host)
            stages.append(st)
            if device_ms is not None:
                step_s = device_ms / 1000.0
            elif device:
                step_s = _flops_step_seconds(cfg, device)
            else:
                step_s = 1.0 / (host * steps)  # a device exactly as slow as this round's host
            runs["device"].append(1.0 / (step_s * steps))
            bal, bal_st = _job(cfg, root / "in", root / "bal", step_s)
            runs["balanced"].append(bal)
            idle.append(bal_st)
            runs["balanced_inline"].append(_job(inline, root / "in", root / "inl", step_s)[0])
            runs["host_only_inline"].append(_job(inline, root / "in", root / "hinl", 0.0)[0])
            log.info("round %d: %s", r, {k: round(v[-1], 2) for k, v in runs.items()})
        row.update(summarize(runs, 3))
        med = row["images_per_s"]
        row.update({"host_only_vs_naive": round(med["host_only"] / med["naive"], 3),
                    "host_only_inline_vs_naive": round(med["host_only_inline"] / med["naive"], 3),
                    "device_model": device or (f"{device_ms} ms per image-step" if device_ms else "as slow as host"),
                    "host_ms_per_image": {k: round(statistics.median([s[k] for s in stages if s.get(k) is not None]), 3)
                                          for k in stages[0] if any(s.get(k) is not None for s in stages)},
                    "balanced_device_idle": {k: round(statistics.median([d[k] for d in idle if k in d]), 3)
                                             for k in ("device_idle_share", "device_idle_share_batch_start")
                                             if any(k in d for d in idle)},
                    "loadavg_after": os.getloadavg()})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    append_rows(results, [row])
    return row


def summarize(runs: dict[str, list[float]], digits: int) -> dict:
    """Medians of alternating rounds and the efficiency: achieved / min(host-only, device-only), overlapped and inline."""
    med = {k: round(statistics.median(v), digits) for k, v in runs.items()}
    bound = min(med["host_only"], med["device"])
    return {"images_per_s": med, "rounds": {k: [round(x, digits) for x in v] for k, v in runs.items()},
            "efficiency": round(med["balanced"] / bound, 3), "efficiency_inline": round(med["balanced_inline"] / bound, 3)}


def _flops_step_seconds(cfg, device: str) -> float:
    """Per image-step seconds on ``device`` at 40% of its peak, from the job's FLOPs (an estimate)."""
    from dreamfleet.engine.build import build_dream_model

    from .flops import job_flops_per_image

    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    dm = build_dream_model(cfg.model, cfg.layer, random_weights=True)
    f = job_flops_per_image(dm.module, 128, 160, cfg.octaves, cfg.octave_scale, cfg.iterations, dm.spec.min_size)
    return f / (0.4 * DEVICES[device] * 1e12) / (cfg.octaves * cfg.iterations)


def format_row(row: dict) -> str:
    r, st = row["images_per_s"], row["host_ms_per_image"]
    lines = [f"pipeline bench (SIMULATED device: {row['device_model']}), {row['images']} x {row['input']} -> "
             f"{row['working_size']}, {row['output']}; load {row['loadavg_before'][0]:.2f} -> "
             f"{row['loadavg_after'][0]:.2f}",
             f"  naive Pillow loop     {r['naive']:8.2f} images/s",
             f"  host-only (job)       {r['host_only']:8.2f} images/s   = {row['host_only_vs_naive']:.2f}x naive",
             f"  host-only, inline     {r['host_only_inline']:8.2f} images/s   = "
             f"{row['host_only_inline_vs_naive']:.2f}x naive (one thread, fast decode alone)",
             f"  device-only (sim.)    {r['device']:8.2f} images/s",
             f"  achieved, overlapped  {r['balanced']:8.2f} images/s   efficiency {row['efficiency']:.3f}",
             f"  achieved, inline      {r['balanced_inline']:8.2f} images/s   efficiency {row['efficiency_inline']:.3f}",
             "  host ms/image: " + ", ".join(f"{k} {v:.2f}" for k, v in st.items()),
             "  balanced, simulated device idle share: " + ", ".join(
                 f"{k} {v:.3f}" for k, v in row.get("balanced_device_idle", {}).items()),
             f"  decode PSNR vs float path: mean {row['decode_psnr']['mean_db']} dB, min {row['decode_psnr']['min_db']} dB"]
    return "\n".join(lines)
