"""Large-image benchmark: one photo at full resolution, tiled vs untiled, time and peak RSS.

``python -m dreamfleet.benchmarks.large_image [--quick] [--size WxH] [--tile T] [--batch-size N] [--threads K]``

The photo is data/samples/coffee.png upscaled (bicubic) to the size asked for (2400x1600 by
default: 4x). Each case is a separate ``dreamfleet dream`` process (``--max-side 0``, BVLC
GoogLeNet, the classic preset, ``--octaves 2 --iterations 2``), so its peak RSS is its own:
``ru_maxrss`` of that child from ``os.wait4``. Time is the child's wall time and the report's
per-image dream time (model build excluded). Cases run untiled, tiled, untiled, tiled... so
both see the same machine load; the row keeps every repeat and the load average. Rows are
appended to ``results/large_image.jsonl``; ``results/large_image.md`` is rewritten.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dreamfleet.engine.hostmem import THP_ENV
from dreamfleet.engine.report import read_records

from . import hardware
from .rows import append_rows

log = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
PHOTO = Path(__file__).resolve().parent.parent / "data" / "samples" / "coffee.png"


def make_photo(path: Path, w: int, h: int) -> None:
    from PIL import Image

    Image.open(PHOTO).convert("RGB").resize((w, h), Image.BICUBIC).save(path)


def run_case(photo_dir: Path, out: Path, args: argparse.Namespace, tile: int, overlap: int | None) -> dict:
    """One ``dreamfleet dream`` child; wall seconds, peak RSS (MiB), the report's dream seconds."""
    cmd = [sys.executable, "-m", "dreamfleet.cli", "dream", str(photo_dir), "-o", str(out), "--overwrite",
           "--max-side", "0", "--octaves", str(args.octaves), "--iterations", str(args.iterations),
           "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--tile", str(tile),
           "--no-progress"]
    if overlap is not None:
        cmd += ["--tile-overlap", str(overlap)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"dreamfleet dream exited with {status}: {stderr[-2000:]}")
    report = json.loads((out / "dreamfleet-report.json").read_text())
    rec = next(read_records(out, run=report["run"]))
    return {"wall_s": round(wall, 2), "dream_s": rec["timings"]["dream"], "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "status": rec["status"], "shape": rec["shape"], "output": rec["output"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dreamfleet.benchmarks.large_image", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1200x800 with --tile 256 (the make bench row)")
    p.add_argument("--size", default=None, help="photo WxH (default 2400x1600; --quick 1200x800)")
    p.add_argument("--tile", type=int, default=None, help="tile side (default 512; --quick 256)")
    p.add_argument("--tile-overlap", default=None, help="overlaps to measure, e.g. 64,48 (default: dreamfleet's default)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--octaves", type=int, default=2)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads in each child (default 2)")
    p.add_argument("--repeats", type=int, default=1, help="alternating untiled/tiled pairs (default 1)")
    p.add_argument("--keep", default=None, metavar="DIR", help="keep the photo and outputs here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    w, h = (int(v) for v in (args.size or ("1200x800" if args.quick else "2400x1600")).lower().split("x"))
    tile = args.tile or (256 if args.quick else 512)
    work = Path(args.keep or tempfile.mkdtemp(prefix="dreamfleet-large-"))
    (work / "in").mkdir(parents=True, exist_ok=True)
    make_photo(work / "in" / "photo.png", w, h)
    overlaps = [int(v) for v in args.tile_overlap.split(",")] if args.tile_overlap else [None]
    cases = [("untiled", 0, None)] + [(f"tiled{'' if o is None else o}", tile, o) for o in overlaps]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in cases}
    load_before = os.getloadavg()
    for i in range(args.repeats):
        for name, t, ov in cases:
            r = run_case(work / "in", work / f"out-{name}", args, t, ov)
            log.info("%s #%d: %.1f s wall, %.1f s dream, peak RSS %.0f MiB (load %s)", name, i + 1, r["wall_s"],
                     r["dream_s"], r["peak_rss_mib"], [round(v, 2) for v in os.getloadavg()])
            runs[name].append(r)

    def best(name: str, key: str) -> float:
        return min(r[key] for r in runs[name])

    rows = []
    for name, _, ov in cases[1:]:
        rows.append(dict(
            case=f"bvlc_googlenet {w}x{h} max-side 0, {args.octaves} octaves x {args.iterations} iterations",
            width=w, height=h, tile=tile, tile_overlap=ov, batch_size=args.batch_size, threads=args.threads,
            runs={"untiled": runs["untiled"], "tiled": runs[name]},
            rss_ratio=round(best(name, "peak_rss_mib") / best("untiled", "peak_rss_mib"), 3),
            wall_ratio=round(best(name, "wall_s") / best("untiled", "wall_s"), 3),
            dream_ratio=round(best(name, "dream_s") / best("untiled", "dream_s"), 3),
            huge_pages=os.environ.get(THP_ENV, "1") == "1",  # the children's THP_MEM_ALLOC_ENABLE (the CLI's default: on)
            load_avg_before=[round(v, 2) for v in load_before], load_avg_after=[round(v, 2) for v in os.getloadavg()],
            env=hardware.environment(torch.device("cpu")), timestamp=hardware.now_utc()))
    append_rows(RESULTS / "large_image.jsonl", rows)
    (RESULTS / "large_image.md").write_text(table([json.loads(line) for line in
                                                   (RESULTS / "large_image.jsonl").read_text().splitlines()]))
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    out = ["| image | tile, overlap, batch | threads | huge pages | untiled: dream s / peak RSS MiB "
           "| tiled: dream s / peak RSS MiB | time ratio | RSS ratio | load (1 min) | when |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        u, t = r["runs"]["untiled"], r["runs"]["tiled"]
        cell = lambda runs: ", ".join(f"{x['dream_s']:.0f} / {x['peak_rss_mib']:.0f}" for x in runs)  # noqa: E731
        out.append(f"| {r['width']}x{r['height']} | {r['tile']}, {r['tile_overlap'] or 'default'}, {r['batch_size']} "
                   f"| {r['threads']} | {'on' if r.get('huge_pages') else 'off'} | {cell(u)} | {cell(t)} | {r['dream_ratio']:.2f} | {r['rss_ratio']:.2f} "
                   f"| {r['load_avg_before'][0]} -> {r['load_avg_after'][0]} | {r['timestamp']} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
