"""Cluster benchmark: images/s of ``dreamfleet run`` with 1 and 2 Ray workers vs the in-process engine.

One run of each on the same generated job (same images, same parameters, fresh output
folders), one local Ray cluster shared by the cluster runs. Prints the figures and the
ratio (2 workers / in-process, steady state) and appends one JSON row with the config,
versions and device to ``benchmarks/results/cluster_cpu.jsonl``.

    python benchmarks/cluster_bench.py --images 32 --max-side 128 --iterations 4
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .rows import append_rows

log = logging.getLogger("dreamfleet.bench.cluster")

RESULTS = Path("benchmarks") / "results" / "cluster_cpu.jsonl"  # under the current directory


def make_job(folder: Path, n: int, side: int, seed: int = 0) -> None:
    """n smooth random images (two shapes, so the job has two buckets)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h = side if i % 2 else (side * 3) // 4
        small = rng.integers(0, 255, (max(h // 8, 2), side // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side, h), Image.Resampling.BICUBIC).save(folder / f"img{i:03d}.png")


def figures(report) -> dict:
    t = report.totals()
    return {"done": t["done"], "failed": t["failed"], "wall_s": t["wall_seconds"], "work_s": t["work_seconds"],
            "images_per_s": t["images_per_s"], "images_per_s_steady": t["images_per_s_steady"]}


def add_job_arguments(ap: argparse.ArgumentParser, images: int, iterations: int) -> None:
    """The small generated job these benchmarks dream: count, size, pyramid, batch, model."""
    ap.add_argument("--images", type=int, default=images)
    ap.add_argument("--max-side", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=iterations)
    ap.add_argument("--octaves", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--model", default="bvlc_googlenet")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_job_arguments(ap, images=32, iterations=4)
    ap.add_argument("--threads-per-worker", type=int, default=1)
    ap.add_argument("--inproc-threads", default="0",
                    help="comma-separated torch thread counts for in-process runs; 0 = torch's default (default: 0)")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (default: 1,2)")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import torch

    from dreamfleet.backends import create_backend
    from dreamfleet.cluster.driver import ClusterOptions, connect, run_cluster_job
    from dreamfleet.engine.config import config_to_dict, make_config
    from dreamfleet.engine.job import run_job
    from dreamfleet.engine.report import environment

    cfg = make_config(None, None, dict(model=args.model, max_side=args.max_side, iterations=args.iterations,
                                       octaves=args.octaves, batch_size=args.batch_size, device="cpu"))
    root = Path(tempfile.mkdtemp(prefix="dreamfleet-cluster-bench-"))
    row: dict = {"bench": "cluster_cpu", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "images": args.images,
                 "config": config_to_dict(cfg), "threads_per_worker": args.threads_per_worker,
                 "environment": environment(), "device": "cpu", "loadavg_before": os.getloadavg()}
    try:
        make_job(root / "in", args.images, args.max_side)
        default_threads = torch.get_num_threads()
        for n in (int(t) for t in args.inproc_threads.split(",")):  # the first one is the ratios' baseline
            torch.set_num_threads(n or default_threads)
            rep = run_job(cfg, [str(root / "in")], root / f"out-inproc-{n}", create_backend, progress=False)
            key = "in_process" if "in_process" not in row else f"in_process_{n}t"
            row[key] = dict(figures(rep), torch_threads=torch.get_num_threads())
            print(f"in-process ({torch.get_num_threads()} torch threads): {rep.summary()}")
        torch.set_num_threads(default_threads)
        ray, _ = connect(None)
        row["ray"] = ray.__version__
        try:
            for n in (int(w) for w in args.workers.split(",")):
                opts = ClusterOptions(workers=n, gpus_per_worker=0, torch_threads=args.threads_per_worker,
                                      contact_sheet=0)
                res = run_cluster_job(cfg, [str(root / "in")], root / f"out-{n}w", create_backend, opts)
                row[f"cluster_{n}w"] = figures(res.report)
                print(f"cluster, {n} worker(s) x {args.threads_per_worker} thread(s): {res.report.summary()}")
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    row["loadavg_after"] = os.getloadavg()  # other work on the machine skews CPU figures; read them with this
    for base in [k for k in row if k.startswith("in_process")]:
        for key in [k for k in row if k.startswith("cluster_") and k.endswith("w")]:
            for fig, tag in (("images_per_s_steady", ""), ("images_per_s", "_wall")):
                b = row[base][fig]
                row[f"ratio_{key}_vs_{base}{tag}"] = round(row[key][fig] / b, 3) if b else None
    for key, val in row.items():
        if key.startswith("ratio_"):
            print(f"{key}: {val}")
    append_rows(args.results, [row])
    print(f"row appended to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
