"""``dreamfleet bench --scale``: the job's own costs as the job grows (issue 18).

Dreams N tiny generated images (googlenet, random weights, one octave, one step) at two job
sizes, each in a fresh ``dreamfleet dream`` / ``dreamfleet run`` child process, cases
alternating (small, large, per mode), then reruns each job (every output exists: skip only).
Per case: time per dreamed image (the report's work seconds / done, start-up excluded), peak
RSS of the child (``wait4``; for ``run`` the driver process, the workers are Ray's), report
bytes per image (the records file and the summary), and the skip-only rerun's time after
start-up (the report's wall seconds: planning, ledger, report, lock). Derived: RSS growth per
10k images and the time-per-image ratio between the two sizes. Rows go to
``results/scale_cpu.jsonl``; the figures are printed as one line each.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import hardware
from .rows import append_rows

log = logging.getLogger(__name__)

JOB = ["--model", "googlenet", "--random-weights", "--max-side", "16", "--octaves", "1", "--iterations", "1",
       "--batch-size", "64", "--no-progress"]
MODE_ARGS = {"dream": ["--threads", "1"], "run": ["--workers", "1", "--threads-per-worker", "1", "--contact-sheet", "0"]}


def make_inputs(folder: Path, n: int) -> Path:
    """n tiny 16x16 PNGs (distinct pixels, 2-level folders like a real dataset)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"d{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(sub / f"im{i:06d}.png")
    return folder


def run_child(mode: str, src: Path, out: Path) -> dict:
    """One ``dreamfleet <mode>`` child: wall, peak RSS and the figures of its report."""
    cmd = [sys.executable, "-m", "dreamfleet.cli", mode, str(src), "-o", str(out), *JOB, *MODE_ARGS[mode]]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"dreamfleet {mode} exited with {status}: {stderr[-2000:]}")
    summary = json.loads((out / "dreamfleet-report.json").read_text())
    t = summary["totals"]
    return {"wall_s": round(wall, 2), "job_wall_s": t["wall_seconds"], "work_s": t["work_seconds"],
            "done": t["done"], "skipped": t["skipped"], "failed": t["failed"],
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "ms_per_image": round(1000 * t["work_seconds"] / t["done"], 3) if t["done"] else None}


def run_scale_bench(sizes: tuple[int, int], modes: tuple[str, ...], out_dir: Path, keep: str | None = None) -> list[dict]:
    work = Path(keep or tempfile.mkdtemp(prefix="dreamfleet-scale-"))
    for n in sizes:
        if not (work / f"in{n}").exists():
            t0 = time.perf_counter()
            make_inputs(work / f"in{n}", n)
            log.info("made %d inputs in %.1fs", n, time.perf_counter() - t0)
    load_before = os.getloadavg()
    cases: dict[tuple[str, int], dict] = {}
    for mode in modes:  # alternating sizes within a mode
        for n in sizes:
            out = work / f"out-{mode}-{n}"
            first = run_child(mode, work / f"in{n}", out)
            first_bytes = (out / "dreamfleet-report.jsonl").stat().st_size
            rerun = run_child(mode, work / f"in{n}", out)
            cases[(mode, n)] = {"first": first, "rerun": rerun, "report_bytes_per_image": round(first_bytes / n, 1),
                                "summary_bytes": (out / "dreamfleet-report.json").stat().st_size}
            log.info("%s %d: %s", mode, n, cases[(mode, n)])
    rows = []
    small, large = sizes
    for mode in modes:
        a, b = cases[(mode, small)], cases[(mode, large)]
        growth = (b["first"]["peak_rss_mib"] - a["first"]["peak_rss_mib"]) / (large - small) * 10000
        rows.append(dict(
            case=f"scale {mode}: googlenet random weights, 16x16, 1 octave x 1 step, batch 64", mode=mode,
            sizes=list(sizes), runs={str(small): a, str(large): b},
            rss_growth_mib_per_10k=round(growth, 2),
            time_per_image_ratio=round(b["first"]["ms_per_image"] / a["first"]["ms_per_image"], 3),
            report_bytes_per_image=b["report_bytes_per_image"],
            skip_rerun_s=b["rerun"]["job_wall_s"], skip_rerun_wall_s=b["rerun"]["wall_s"],
            skip_rerun_cpu_s=b["rerun"].get("cpu_s"),  # the whole child's CPU time (start-up included): load-free
            load_avg_before=[round(v, 2) for v in load_before], load_avg_after=[round(v, 2) for v in os.getloadavg()],
            env=hardware.environment(torch.device("cpu")), timestamp=hardware.now_utc()))
    append_rows(out_dir / "scale_cpu.jsonl", rows)
    return rows


def format_row(r: dict) -> str:
    small, large = r["sizes"]
    a, b = r["runs"][str(small)]["first"], r["runs"][str(large)]["first"]
    return (f"scale {r['mode']}: {small} -> {large} images: peak RSS {a['peak_rss_mib']:.0f} -> {b['peak_rss_mib']:.0f} MiB "
            f"({r['rss_growth_mib_per_10k']:+.2f} MiB / 10k images), {a['ms_per_image']:.2f} -> {b['ms_per_image']:.2f} "
            f"ms/image ({r['time_per_image_ratio']:.2f}x), report {r['report_bytes_per_image']:.0f} B/image, "
            f"skip-only rerun of {large}: {r['skip_rerun_s']:.1f} s after start-up ({r['skip_rerun_wall_s']:.1f} s wall)")


__all__ = ["format_row", "make_inputs", "run_child", "run_scale_bench"]
