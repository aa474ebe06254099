"""``dreamfleet bench --peer``: dreamfleet against gordicaleksa/pytorch-deepdream on the same job, on this machine.

The job (issue 17): random-init torchvision VGG16 up to relu4_3 (``--model vgg16 --layer features.22``),
8 photos at 256x192, 4 octaves x 1.4, 10 iterations, jitter 32, Gaussian-smoothed gradient, fp32,
2 torch threads. Cases, each a fresh child process run exactly as a user runs it:

- ``peer``: ``benchmarks/peer_baseline.py`` (our harness of the peer's loop), one image at a time;
- ``dreamfleet-b1`` / ``dreamfleet-b8``: ``dreamfleet dream`` with ``--batch-size`` 1 / 8;
- optionally ``dreamfleet-b1-nolanes`` / ``dreamfleet-b8-nolanes`` (``--lanes-ab``): the same with
  ``--cpu-lanes 1`` (no CPU lanes), so lanes are compared within one run, cases alternating;
- optionally ``dreamfleet-b8-<precision>`` (``--precisions auto``): the same with ``--precision``.

Every round runs every case once, in turn (the machine is shared: cases alternate so load drifts hit
all of them); images/s are steady figures (each child's own time after its model is built) and the
ratios are taken per round. Rows -> ``results/peer.jsonl`` (config, versions, device, CPU model/flags).
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dreamfleet.engine.hostmem import CACHE_ENV, THP_ENV

from . import hardware
from .rows import append_rows
from .run import sample_dirs

log = logging.getLogger(__name__)

JOB = dict(model="vgg16", layer="features.22", octaves=4, octave_scale=1.4, iterations=10, jitter=32,
           smooth="gaussian", smooth_sigma="0.7,2.5", step=0.09, width=256, height=192)
# dreamfleet's sigma schedule matched to the peer's (it + 1) / 10 * 2 + 0.5 over an octave: 0.7 .. 2.5 px
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg")


def make_photos(folder: Path, n: int, wh: tuple[int, int]) -> list[Path]:
    """``n`` photos at ``wh`` (centre-cropped to its aspect): the sample photos, then their mirror images."""
    from PIL import Image, ImageOps

    sources = [d / name for name in PHOTOS for d in sample_dirs() if (d / name).is_file()]
    sources += [Path("/work/shared/samples") / name for name in PHOTOS if not sources]
    if not sources:
        raise ValueError(f"no sample photos found in {[str(d) for d in sample_dirs()]}")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        img = ImageOps.fit(Image.open(sources[i % len(sources)]).convert("RGB"), wh, Image.BICUBIC)
        if (i // len(sources)) % 2:
            img = ImageOps.mirror(img)
        out.append(folder / f"photo{i:02d}.png")
        img.save(out[-1])
    return out


def child_env(threads: int, plain: bool = False, **env_vars: str) -> dict[str, str]:
    """A child's environment; ``plain``: without the settings the dreamfleet CLI makes for itself (the peer's case).

    ``dreamfleet bench`` set ``THP_MEM_ALLOC_ENABLE=1`` for itself; a plain ``python deepdream.py`` would not
    have it. Everything else (``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` if the user set them) reaches every case.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), RAY_USAGE_STATS_ENABLED="0", **env_vars)
    if plain:
        for name in (THP_ENV, CACHE_ENV):
            env.pop(name, None)
    return env


def _child(cmd: list[str], threads: int, plain: bool = False, **env_vars: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=child_env(threads, plain, **env_vars), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {proc.stderr[-1500:]}")
    return proc


def run_peer(photos: Path, out: Path, threads: int) -> dict:
    cmd = [sys.executable, "-m", "dreamfleet.benchmarks.peer_baseline", str(photos), "-o", str(out),
           "--threads", str(threads), "--octaves", str(JOB["octaves"]), "--octave-scale", str(JOB["octave_scale"]),
           "--iterations", str(JOB["iterations"]), "--jitter", str(JOB["jitter"])]
    res = json.loads(_child(cmd, threads, plain=True).stdout.strip().splitlines()[-1])
    return {"seconds": res["work_seconds"], "cpu_seconds": res["work_cpu_seconds"], "images": res["images"],
            "page_faults": res["work_page_faults"],
            "octave_shapes": res["octave_shapes"]}


def dream_command(photos: Path, out: Path, batch: int, threads: int, precision: str = "fp32",
                  lanes: int | None = None) -> list[str]:
    """The ``dreamfleet dream`` command line of the job (``lanes``: ``--cpu-lanes``; None: the default, auto)."""
    extra = [] if lanes is None else ["--cpu-lanes", str(lanes)]
    return [sys.executable, "-m", "dreamfleet.cli", "dream", str(photos), "-o", str(out), "--overwrite",
            "--no-progress", "--model", JOB["model"], "--layer", JOB["layer"], "--random-weights",
            "--octaves", str(JOB["octaves"]), "--octave-scale", str(JOB["octave_scale"]),
            "--iterations", str(JOB["iterations"]), "--jitter", str(JOB["jitter"]), "--smooth", JOB["smooth"],
            "--smooth-sigma", JOB["smooth_sigma"], "--step", str(JOB["step"]), "--step-units", "normalized",
            "--batch-size", str(batch), "--threads", str(threads), "--precision", precision, "--device", "cpu"] + extra


def run_dreamfleet(photos: Path, out: Path, batch: int, threads: int, precision: str = "fp32",
                   cache: bool = True, lanes: int | None = None) -> dict:
    _child(dream_command(photos, out, batch, threads, precision, lanes), threads,
           **{CACHE_ENV: "1" if cache else "0"})
    report = json.loads((out / "dreamfleet-report.json").read_text())
    t = report["totals"]
    if t["done"] != t["images"]:
        raise RuntimeError(f"dreamfleet dream: {t['done']} of {t['images']} images done")
    return {"seconds": t["work_seconds"], "cpu_seconds": report.get("work_cpu_seconds"), "images": t["done"],
            "page_faults": report.get("work_page_faults"),
            "backend": report.get("backend"), "cpu_lanes": report.get("cpu_lanes")}


def cases(precisions: tuple[str, ...], allocator_ab: bool = False,
          lanes_ab: bool = False) -> list[tuple[str, int, str]]:
    """(name, batch size, precision); batch 0 is the peer; a name ending in -nocache runs with glibc's defaults,
    one ending in -nolanes with ``--cpu-lanes 1`` (each right after its case with lanes: they alternate)."""
    out = [("peer", 0, "fp32")]
    for b in (1, 8):
        out += [(f"dreamfleet-b{b}", b, "fp32")] + ([(f"dreamfleet-b{b}-nolanes", b, "fp32")] if lanes_ab else [])
    if allocator_ab:  # the fix of issue 17 switched off (DREAMFLEET_CACHE_HOST_ALLOCATIONS=0)
        out += [("dreamfleet-b1-nocache", 1, "fp32"), ("dreamfleet-b8-nocache", 8, "fp32")]
    return out + [(f"dreamfleet-b8-{p}", 8, p) for p in precisions if p != "fp32"]


def summarize(name: str, runs: list[dict], peer_runs: list[dict]) -> dict:
    ips = [r["images"] / r["seconds"] for r in runs]
    ratios = [(r["images"] / r["seconds"]) / (p["images"] / p["seconds"]) for r, p in zip(runs, peer_runs)]
    return {"case": name, "images_per_s": round(statistics.median(ips), 4),
            "images_per_s_rounds": [round(v, 4) for v in ips], "vs_peer": round(statistics.median(ratios), 3),
            "vs_peer_rounds": [round(v, 3) for v in ratios],
            # CPU seconds per image (all threads) and cores kept busy: robust to other processes' load
            "cpu_s_per_image": round(statistics.median(r["cpu_seconds"] / r["images"] for r in runs), 3),
            "page_faults_per_image": int(statistics.median(r["page_faults"] / r["images"] for r in runs)),
            "cores_busy": round(statistics.median(r["cpu_seconds"] / r["seconds"] for r in runs), 2),
            "vs_peer_cpu": round(statistics.median(p["cpu_seconds"] / r["cpu_seconds"] * r["images"] / p["images"]
                                                   for r, p in zip(runs, peer_runs)), 3)}


def run_peer_bench(rounds: int = 3, images: int = 8, threads: int = 2, precisions: tuple[str, ...] = (),
                   out: str | Path | None = None, allocator_ab: bool = False, lanes_ab: bool = False) -> list[dict]:
    """Alternate every case ``rounds`` times; returns (and appends) one row per case."""
    work = Path(tempfile.mkdtemp(prefix="dreamfleet-peer-"))
    photos = work / "photos"
    make_photos(photos, images, (JOB["width"], JOB["height"]))
    todo = cases(precisions, allocator_ab, lanes_ab)
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in todo}
    load_before = os.getloadavg()
    for r in range(rounds):
        for name, batch, precision in todo:
            dest = work / f"out-{name}"
            res = run_peer(photos, dest, threads) if batch == 0 else run_dreamfleet(
                photos, dest, batch, threads, precision, cache=not name.endswith("-nocache"),
                lanes=1 if name.endswith("-nolanes") else None)
            runs[name].append(res)
            log.info("round %d %-21s %.4f images/s (%.1f s, %.1f CPU s, %d page faults, load %s)", r + 1, name,
                     res["images"] / res["seconds"], res["seconds"], res["cpu_seconds"], res["page_faults"],
                     [round(v, 2) for v in os.getloadavg()])
    info, flags = hardware.cpu_flags()
    env = dict(hardware.environment(torch.device("cpu")), cpu_model=info.get("model name"),
               cpu_flags=sorted(flags), native_bf16=bool(flags & {"avx512_bf16", "amx_bf16"}))
    rows = []
    for name, batch, precision in todo:
        row = summarize(name, runs[name], runs["peer"])
        row.update(bench="peer", batch_size=batch or 1, precision=precision, rounds=rounds, images=images,
                   threads=threads, job=JOB, peer_octave_shapes=runs["peer"][0]["octave_shapes"],
                   backend=runs[name][0].get("backend"), cpu_lanes=runs[name][0].get("cpu_lanes"), thp_env_bench=os.environ.get(THP_ENV),
                   peer_env="plain (no THP_MEM_ALLOC_ENABLE, no DREAMFLEET_* variables)",
                   omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), gomp_spincount=os.environ.get("GOMP_SPINCOUNT"),
                   load_avg_before=[round(v, 2) for v in load_before],
                   load_avg_after=[round(v, 2) for v in os.getloadavg()], env=env, timestamp=hardware.now_utc())
        rows.append(row)
    append_rows(Path(out or Path("benchmarks") / "results") / "peer.jsonl", rows)
    return rows


def table(rows: list[dict]) -> str:
    cpu = rows[0]["env"].get("cpu_model") if rows else "?"
    lines = [f"peer comparison on {cpu}, {rows[0]['threads'] if rows else '?'} torch threads",
             "| case | images/s (median) | per round | vs the peer (median) | per round | CPU s/image | cores busy "
             "| vs the peer, CPU time | page faults/image |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['images_per_s']:.4f} | {', '.join(f'{v:.4f}' for v in r['images_per_s_rounds'])}"
                     f" | {r['vs_peer']:.2f}x | {', '.join(f'{v:.2f}' for v in r['vs_peer_rounds'])} "
                     f"| {r['cpu_s_per_image']:.2f} | {r['cores_busy']:.2f} | {r['vs_peer_cpu']:.2f}x "
                     f"| {r['page_faults_per_image']} |")
    return "\n".join(lines)


__all__ = ["JOB", "cases", "child_env", "dream_command", "make_photos", "run_peer_bench", "summarize", "table"]


if __name__ == "__main__":  # python -m dreamfleet.benchmarks.peer_bench [rounds] [images]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    print(table(run_peer_bench(*(int(a) for a in sys.argv[1:3]))))
    print(f"{time.perf_counter() - t0:.0f} s")
