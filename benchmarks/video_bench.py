"""``dreamfleet bench --video``: video throughput (lockstep vs one at a time vs the image path) and flicker.

One process, one model (``DreamRunner`` built once; the real BVLC GoogLeNet weights), on pan
clips generated from the sample photos (PyAV, 30000/1001 fps). Cases alternate in rounds
(this machine is shared and noisy); each figure is the median over rounds:

* ``lockstep``: B clips of one size in one job (frame t of the B clips as one batch);
* ``one_clip``: one of those clips alone (the issue's target: B clips <= 2.3x one clip);
* ``sequential``: the B clips one after the other (frames/s one video at a time);
* ``images``: the same frames as PNG images through the image path, batch B, same working size.

Flicker: one longer clip dreamed with ``--video-flow dis`` (temporal coherence, the default
blend) and ``--video-flow none`` (independent frames) at the same settings: the mean
|d_t - warp(d_{t-1})| over pixels where the warped source frames agree, and the dream strength
mean |dream - source| (``engine.video.coherence.sequence_flicker``). One JSON row goes to
``benchmarks/results/video_<device>.jsonl``; ``--strip PATH`` also writes a frame strip
(sources / coherent / independent) as a small PNG.
"""
from __future__ import annotations

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

log = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
PHOTOS = ("coffee.png", "astronaut.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg")


def make_pan_clip(path: Path, photo: str, frames: int, size: tuple[int, int], step: int = 2) -> Path:
    """An H.264 clip panning ``step`` px per frame across a sample photo, at 30000/1001 fps."""
    import av
    from PIL import Image

    w, h = size
    im = Image.open(SAMPLES / photo).convert("RGB")
    width = w + 16 + step * frames
    src = np.asarray(im.resize((width, max(h, round(im.height * width / im.width)))))
    y0 = (src.shape[0] - h) // 2
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(30000, 1001), options={"crf": "12", "preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            rgb = np.ascontiguousarray(src[y0:y0 + h, 8 + step * t:8 + step * t + w])
            out.mux(vs.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(vs.encode(None))
    return path


def _sources(clip: Path, hw: tuple[int, int]) -> list[np.ndarray]:
    from dreamfleet.engine.video.decode import iter_frames

    return [f.rgb for f in iter_frames(clip, size=(hw[1], hw[0]))]


def _timed(runner, cfg, inputs: list[str], out: Path) -> tuple[float, list]:
    from dreamfleet.engine.job import plan_job

    items = plan_job(cfg, inputs, out).todo
    t0 = time.perf_counter()
    recs = runner.process(items)
    seconds = time.perf_counter() - t0
    bad = [r for r in recs if r.status != "done"]
    if bad:
        raise RuntimeError(f"benchmark case failed: {bad[0].rel}: {bad[0].reason}")
    return seconds, recs


CASES = ("lockstep", "one_clip", "sequential", "images")


def _case(runner, cfg, case: str, paths: list[str], images: list[str], out: Path) -> dict:
    """One timed case: wall and process CPU seconds, and the host time per frame by stage (summed over threads)."""
    runner.stages.reset()
    c0 = time.process_time()
    if case == "sequential":
        seconds = sum(_timed(runner, cfg, [p], out / str(k))[0] for k, p in enumerate(paths))
    else:
        seconds = _timed(runner, cfg, {"lockstep": paths, "one_clip": paths[:1], "images": images}[case], out)[0]
    host = {k: v for k, v in runner.stages.per_image_ms().items() if v is not None}
    return {"s": seconds, "cpu_s": time.process_time() - c0, "host_ms": host}


def _ratios(sec: dict) -> dict:
    """The issue's two throughput figures from one set of case seconds."""
    return {"lockstep_vs_images": round(sec["images"] / sec["lockstep"], 3),
            "lockstep_vs_one_clip_time": round(sec["lockstep"] / sec["one_clip"], 3)}


def run_video_bench(clips: int = 3, frames: int = 48, size: tuple[int, int] = (96, 64), repeats: int = 3,
                    flicker_frames: int = 16, device: str = "cpu", results: Path = RESULTS,
                    strip: Path | None = None, flicker_size: tuple[int, int] = (256, 144)) -> dict:
    from dreamfleet.backends import create_backend
    from dreamfleet.engine.config import config_to_dict, make_config
    from dreamfleet.engine.runner import DreamRunner

    base = dict(octaves=1, iterations=2, max_side=max(size), snap=16, batch_size=clips, device=device, io_threads=1,
                keep_frames=True)  # throughput: a short dream (the frame count, not the dream, is what varies)
    cfg = make_config(None, None, base)
    root = Path(tempfile.mkdtemp(prefix="dreamfleet-video-bench-"))
    row: dict = {"bench": "video", "date": now_utc(), "clips": clips, "frames_per_clip": frames,
                 "size": list(size), "repeats": repeats, "config": config_to_dict(cfg)}
    try:
        paths = [str(make_pan_clip(root / f"clip{i}.mp4", PHOTOS[i % len(PHOTOS)], frames, size)) for i in range(clips)]
        hw = (size[1], size[0])
        (root / "images").mkdir()
        from PIL import Image

        images = []
        for i, p in enumerate(paths):
            for t, rgb in enumerate(_sources(Path(p), hw)):
                images.append(str(root / "images" / f"c{i}_{t:03d}.png"))
                Image.fromarray(rgb).save(images[-1])
        runner = DreamRunner(cfg, create_backend)
        runner.prepare([(clips, *hw), (1, *hw)])
        row["environment"] = environment(runner.device)
        rounds: list[dict] = []
        try:
            _timed(runner, cfg, paths[:1], root / "warmup")  # warm-up: first-call allocations, thread pools
            for r in range(repeats):
                order = CASES if r % 2 == 0 else CASES[::-1]  # alternate the order per round (a noisy machine)
                got = {case: _case(runner, cfg, case, paths, images, root / f"{case}{r}") for case in order}
                sec = {k: v["s"] for k, v in got.items()}
                cpu = {k: v["cpu_s"] for k, v in got.items()}
                rounds.append({"round": r, "order": list(order), "seconds": {k: round(v, 3) for k, v in sec.items()},
                               "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()}, **_ratios(sec),
                               "cpu": _ratios(cpu), "host_ms_per_frame": {k: got[k]["host_ms"]
                                                                          for k in ("lockstep", "images")}})
                log.info("video bench round %d: %s", r, rounds[-1])
        finally:
            runner.close()
        med = {k: statistics.median(rd["seconds"][k] for rd in rounds) for k in CASES}
        n = clips * frames
        row.update({"rounds": rounds, "seconds": {k: round(v, 3) for k, v in med.items()},
                    "frames_per_s": {"lockstep": round(n / med["lockstep"], 3), "sequential": round(n / med["sequential"], 3),
                                     "one_clip": round(frames / med["one_clip"], 3)},
                    "images_per_s": round(n / med["images"], 3), **_ratios(med),
                    "lockstep_vs_sequential_speedup": round(med["sequential"] / med["lockstep"], 3),
                    "round_ratio_medians": {k: statistics.median(rd[k] for rd in rounds) for k in _ratios(med)},
                    "cpu_seconds": {k: round(statistics.median(rd["cpu_seconds"][k] for rd in rounds), 3) for k in CASES}})
        row["cpu"] = _ratios(row["cpu_seconds"])
        log.info("video bench throughput: %s", {k: row[k] for k in ("seconds", "frames_per_s", "images_per_s")})
        # flicker: a dream with some octave detail to carry, on frames large enough for DIS flow and two octaves
        flicker_cfg = dict(base, octaves=2, iterations=3, max_side=max(flicker_size))
        row["flicker"] = _flicker(create_backend, flicker_cfg, root, flicker_size, flicker_frames, strip)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    append_rows(Path(results) / f"video_{device}.jsonl", [row])
    return row


def _flicker(factory, base: dict, root: Path, size: tuple[int, int], frames: int, strip: Path | None) -> dict:
    """Flicker and strength of coherent (dis) vs independent (none) frames of one clip, same settings."""
    from dreamfleet.engine.config import make_config
    from dreamfleet.engine.job import run_job
    from dreamfleet.engine.video.coherence import sequence_flicker
    from dreamfleet.engine.video.scheduler import state_root
    from dreamfleet.engine.video.store import FrameStore

    clip = make_pan_clip(root / "flicker.mp4", PHOTOS[0], frames, size)
    hw = (size[1], size[0])
    sources = _sources(clip, hw)
    got, dreams = {}, {}
    for mode in ("dis", "none"):
        cfg = make_config(None, None, dict(base, batch_size=1, video_flow=mode))
        out = root / f"flicker_{mode}"
        run_job(cfg, [str(clip)], out, factory, progress=False)
        store = FrameStore(state_root(out, cfg.param_hash(), clip.name))
        dreams[mode] = [store.read(f[-1]) for f in store.frames()]
        f, s = sequence_flicker(dreams[mode], sources)
        got[mode] = {"flicker": round(f, 3), "strength": round(s, 3)}
    cfg = make_config(None, None, base)
    res = {"blend": cfg.video_blend, "frames": frames, "size": list(size), "octaves": cfg.octaves, "iterations": cfg.iterations, "coherent": got["dis"], "independent": got["none"],
           "flicker_ratio": round(got["dis"]["flicker"] / got["none"]["flicker"], 3),
           "strength_ratio": round(got["dis"]["strength"] / got["none"]["strength"], 3)}
    if strip is not None:
        pick = np.linspace(0, frames - 1, 5).round().astype(int)
        rows = [np.concatenate([seq[k] for k in pick], axis=1) for seq in (sources, dreams["dis"], dreams["none"])]
        from PIL import Image

        Path(strip).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(strip, optimize=True)
        res["strip"] = str(strip)
    return res


def format_row(row: dict) -> str:
    fps, fl = row["frames_per_s"], row["flicker"]
    lines = [
        f"video bench ({row['clips']} clips x {row['frames_per_clip']} frames, {row['size'][0]}x{row['size'][1]}, "
        f"{row['environment']['device']}, {len(row['rounds'])} rounds, cases alternating):"]
    for rd in row["rounds"]:
        s = rd["seconds"]
        lines.append(f"  round {rd['round']}: lockstep {s['lockstep']:.2f} s | one clip {s['one_clip']:.2f} s | "
                     f"one after another {s['sequential']:.2f} s | images {s['images']:.2f} s -> lockstep / images "
                     f"{rd['lockstep_vs_images']:.2f}x, {row['clips']} clips / one clip {rd['lockstep_vs_one_clip_time']:.2f}x "
                     f"(CPU time: {rd['cpu']['lockstep_vs_images']:.2f}x, {rd['cpu']['lockstep_vs_one_clip_time']:.2f}x)")
    lines += [
        f"  medians: lockstep {fps['lockstep']:.3f} frames/s | one at a time {fps['sequential']:.3f} frames/s | image "
        f"path {row['images_per_s']:.3f} images/s (lockstep / images = {row['lockstep_vs_images']:.2f}x, target >= 0.8)",
        f"  {row['clips']} clips in one job take {row['lockstep_vs_one_clip_time']:.2f}x the time of one clip "
        f"(target <= 2.3)",
        "  host ms per frame, lockstep (last round): " + ", ".join(
            f"{k} {v:.1f}" for k, v in row["rounds"][-1]["host_ms_per_frame"]["lockstep"].items()),
        f"  flicker ({fl['frames']} frames, {fl['size'][0]}x{fl['size'][1]}) {fl['coherent']['flicker']:.2f} vs independent "
        f"{fl['independent']['flicker']:.2f} levels = {fl['flicker_ratio']:.2f}x (target <= 0.7) at "
        f"{fl['strength_ratio']:.2f}x the strength (target >= 0.8)"]
    return "\n".join(lines)
