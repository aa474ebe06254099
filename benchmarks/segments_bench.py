"""Long videos split at scene cuts: one long clip with cuts, dreamed whole against split into segments.

``python -m dreamfleet.benchmarks.segments_bench [--shots 4] [--frames 12] [--repeats 2] [--actors]``

The clip is ``shots`` pans over different sample photos, ``frames`` frames each (hard cuts between them),
at 30000/1001 fps. In one process (one model, ``DreamRunner`` built once), cases alternate in rounds
(medians):

* ``whole``: ``--video-split-frames 0``: one lane, frame t after frame t-1, batch 1;
* ``split``: ``--video-split-frames FRAMES``: the shots as segments, lockstep lanes of one batch.

Each case's time is planning (the cut scan, for ``split``) plus dreaming and the encode; the scan is also
shown alone. ``--actors`` adds ``dreamfleet run`` on a local Ray with 1 and with 2 CPU actors (split on).
One JSON row goes to ``benchmarks/results/segments_<device>.jsonl``.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from .hardware import environment, now_utc
from .rows import append_rows
from .video_bench import PHOTOS, RESULTS, SAMPLES  # the same sample photos and results folder

log = logging.getLogger(__name__)

def make_shots_clip(path: Path, shots: int, frames: int, size: tuple[int, int], step: int = 2) -> Path:
    """``shots`` pans of ``frames`` frames over different photos, one H.264 clip at 30000/1001 fps."""
    import av
    from PIL import Image

    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(30000, 1001), options={"crf": "12", "preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        for s in range(shots):
            im = Image.open(SAMPLES / PHOTOS[s % len(PHOTOS)]).convert("RGB")
            width = w + 16 + step * frames
            src = np.asarray(im.resize((width, max(h, round(im.height * width / im.width)))))  # [H', W', 3]
            y0 = (src.shape[0] - h) // 2
            for t in range(frames):
                rgb = np.ascontiguousarray(src[y0:y0 + h, 8 + step * t:8 + step * t + w])  # [h, w, 3] uint8
                out.mux(vs.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(vs.encode(None))
    return path


def _in_process(runner, cfg, clip: Path, out: Path) -> tuple[float, float]:
    """(seconds planning, seconds planning + dreaming + encoding) of one job in ``runner``."""
    from dreamfleet.engine.job import plan_job

    t0 = time.perf_counter()
    todo = plan_job(cfg, [str(clip)], out).todo
    t1 = time.perf_counter()
    recs = runner.process(todo)
    if [r.status for r in recs] != ["done"]:
        raise RuntimeError(f"benchmark job failed: {recs}")
    return t1 - t0, time.perf_counter() - t0


def _on_ray(cfg, clip: Path, out: Path, workers: int) -> float:
    from dreamfleet.backends import create_backend
    from dreamfleet.cluster.driver import ClusterOptions, run_cluster_job

    t0 = time.perf_counter()
    res = run_cluster_job(cfg, [str(clip)], out, create_backend, ClusterOptions(workers=workers, gpus_per_worker=0),
                          progress=False)
    if res.exit_code:
        raise RuntimeError(f"benchmark run failed: {res.reconciliation}")
    return time.perf_counter() - t0


def run_segments_bench(shots: int = 4, frames: int = 12, size: tuple[int, int] = (96, 64), repeats: int = 2,
                       actors: bool = False, device: str = "cpu", results: Path = RESULTS) -> dict:
    from dreamfleet.backends import create_backend
    from dreamfleet.engine.config import config_to_dict, make_config
    from dreamfleet.engine.runner import DreamRunner

    base = dict(octaves=1, iterations=2, max_side=max(size), snap=16, batch_size=shots, device=device, io_threads=1)
    configs = {"whole": make_config(None, None, dict(base, video_split_frames=0)),
               "split": make_config(None, None, dict(base, video_split_frames=frames))}
    root = Path(tempfile.mkdtemp(prefix="dreamfleet-segments-bench-"))
    row: dict = {"bench": "segments", "date": now_utc(), "shots": shots, "frames_per_shot": frames,
                 "size": list(size), "config": config_to_dict(configs["split"])}
    try:
        clip = make_shots_clip(root / "long.mp4", shots, frames, size)
        runner = DreamRunner(configs["split"], create_backend)
        row["environment"] = environment(runner.device)
        times: dict[str, list[float]] = {"whole": [], "split": [], "scan": []}
        try:
            _in_process(runner, configs["whole"], clip, root / "warmup")
            for r in range(repeats):
                order = ("whole", "split") if r % 2 == 0 else ("split", "whole")
                for case in order:
                    plan_s, total = _in_process(runner, configs[case], clip, root / f"{case}{r}")
                    times[case].append(total)
                    if case == "split":
                        times["scan"].append(plan_s)
        finally:
            runner.close()
        if actors:
            for workers in (1, 2):
                times[f"ray_{workers}"] = [_on_ray(configs["split"], clip, root / f"ray{workers}_{r}", workers)
                                           for r in range(repeats)]
        row["seconds"] = {k: [round(t, 3) for t in v] for k, v in times.items()}
        row["median_s"] = {k: round(statistics.median(v), 3) for k, v in times.items() if v}
        row["min_s"] = {k: round(min(v), 3) for k, v in times.items() if v}
        med = row["median_s"]
        row["split_speedup"] = round(med["whole"] / med["split"], 3)
        if actors:
            row["two_actor_speedup"] = round(med["ray_1"] / med["ray_2"], 3)
        row["load_after"] = environment(runner.device)["load_avg_1_5_15"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    append_rows(Path(results) / f"segments_{device}.jsonl", [row])
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shots", type=int, default=4, help="shots (segments) in the clip (default: 4)")
    p.add_argument("--frames", type=int, default=12, help="frames per shot, and --video-split-frames (default: 12)")
    p.add_argument("--repeats", type=int, default=2, help="rounds, cases alternating (default: 2)")
    p.add_argument("--actors", action="store_true", help="also dreamfleet run on 1 and 2 local Ray CPU actors")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    row = run_segments_bench(args.shots, args.frames, repeats=args.repeats, actors=args.actors, device=args.device)
    print(f"segments: {args.shots} shots x {args.frames} frames, {row['size']}: median s {row['median_s']} (min {row['min_s']}); "
          f"split / whole speedup {row['split_speedup']}x" +
          (f"; 2 actors / 1 actor {row['two_actor_speedup']}x" if args.actors else "") +
          f" (load {row['environment']['load_avg_1_5_15']} -> {row['load_after']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
