"""``dreamfleet bench --pipeline --tiled``: the tile scheduler's host work against a simulated device.

The real job path (``run_job``: decode threads, the tile scheduler, writer threads, report) on
generated 2400x1600 JPEG photos dreamed at full size (``--max-side 0 --tile 512 --batch-size 4``,
2 octaves x 2 iterations, JPEG out), with ``SimulatedDeviceBackend`` in place of a device: a
tile step costs modelled time per tile on a virtual clock and returns a zero gradient. Cases, in
alternating rounds (medians):

* ``host_only``: a device that costs nothing: the scheduler's own rate (decode, the loop's
  whole-image tensor work, which on CPU tensors here is real CPU time and would be device
  kernels on a GPU, encode, write);
* ``balanced``: a device as slow as that (per-tile time = host-only time / tiles);
* ``balanced_inline``: the same with ``io_threads=-1``: decode and write on the scheduler's thread.

Efficiency = achieved / min(host-only, device-only). Every device figure is **simulated**.
One JSON row goes to ``benchmarks/results/pipeline_cpu.jsonl`` (``bench: tiled_pipeline``).
"""
from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .hardware import git_commit
from .pipeline_bench import RESULTS, _job, make_photos, summarize
from .rows import append_rows

log = logging.getLogger(__name__)

SIZE = (2400, 1600)


def tiles_per_image(cfg, h: int, w: int) -> int:
    """Tile slots one h x w image runs: windows per tiled octave x iterations."""
    from dreamfleet.engine.octaves import octave_sizes
    from dreamfleet.engine.tiling import needs_tiling, tile_grid

    return sum(len(tile_grid(oh, ow, cfg.tile, cfg.tile_overlap)) * cfg.iterations
               for oh, ow in octave_sizes(h, w, cfg.octaves, cfg.octave_scale) if needs_tiling(oh, ow, cfg.tile,
                                                                                                   cfg.tile_overlap))


def run_tiled_pipeline_bench(images: int = 6, repeats: int = 2, results: Path = RESULTS,
                             size: tuple[int, int] = SIZE) -> dict:
    from dreamfleet.engine.config import config_to_dict, make_config
    from dreamfleet.engine.report import environment

    torch.set_num_threads(1)
    cfg = make_config(None, None, dict(model="bvlc_googlenet", max_side=0, tile=512, batch_size=4, octaves=2,
                                       iterations=2, device="cpu", overwrite=True))
    inline = make_config(None, None, dict(config_to_dict(cfg), io_threads=-1))
    tiles = tiles_per_image(cfg, size[1], size[0])
    root = Path(tempfile.mkdtemp(prefix="dreamfleet-tiled-pipeline-"))
    row: dict = {"bench": "tiled_pipeline", "simulated_device": True, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "images": images, "input": f"{size[0]}x{size[1]} JPEG q90", "output": "JPEG (same as input)",
                 "tiles_per_image": tiles, "config": config_to_dict(cfg), "environment": environment(),
                 "git_commit": git_commit(), "loadavg_before": os.getloadavg()}
    try:
        make_photos(root / "in", images, size)
        runs: dict[str, list] = {k: [] for k in ("host_only", "device", "balanced", "balanced_inline")}
        idle: list[float] = []
        _job(cfg, root / "in", root / "warm", 0.0)  # warm-up
        for r in range(repeats):
            host, _ = _job(cfg, root / "in", root / "host", 0.0)
            runs["host_only"].append(host)
            tile_s = 1.0 / (host * tiles)  # a device exactly as slow as this round's host
            runs["device"].append(1.0 / (tile_s * tiles))
            bal, st = _job(cfg, root / "in", root / "bal", tile_s)
            runs["balanced"].append(bal)
            idle.append(st.get("device_idle_share", float("nan")))
            runs["balanced_inline"].append(_job(inline, root / "in", root / "inl", tile_s)[0])
            log.info("round %d: %s", r, {k: round(v[-1], 3) for k, v in runs.items()})
        row.update(summarize(runs, 4))
        row.update({"balanced_device_idle_share": round(statistics.median(idle), 3),
                    "loadavg_after": os.getloadavg()})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    append_rows(results, [row])
    return row


def format_row(row: dict) -> str:
    r = row["images_per_s"]
    return "\n".join([
        f"tiled pipeline bench (SIMULATED device, as slow as the host), {row['images']} x {row['input']}, "
        f"{row['tiles_per_image']} tiles per image; load {row['loadavg_before'][0]:.2f} -> {row['loadavg_after'][0]:.2f}",
        f"  host-only (job)       {r['host_only']:8.3f} images/s",
        f"  device-only (sim.)    {r['device']:8.3f} images/s",
        f"  achieved, overlapped  {r['balanced']:8.3f} images/s   efficiency {row['efficiency']:.3f} "
        f"(simulated device idle {row['balanced_device_idle_share']:.3f} of the time)",
        f"  achieved, inline      {r['balanced_inline']:8.3f} images/s   efficiency {row['efficiency_inline']:.3f}"])
