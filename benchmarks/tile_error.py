"""Tile error: how far one tiled gradient is from the untiled gradient, per model and overlap.

``python -m dreamfleet.benchmarks.tile_error [--models ...] [--tile T] [--size WxH] [--overlaps 0,32,64]``

For each registry model (its default layer, the ``l2`` objective) one photo (coffee.png, resized
to the given size) is put in the model's input space, its whole-image gradient is computed once,
then the same gradient assembled from tiles (``engine.tiling.tiled_gradient``) for each overlap.
The error is the relative L2 distance between the two gradients after the per-image mean-abs
normalization the step applies (``g / mean|g|``): the difference in the update actually made.
bvlc_googlenet has its real (vendored) weights; the torchvision models use random weights (no
downloads on these machines), so their rows show the geometry of the error, not a trained net's.
Rows are appended to ``results/tile_error.jsonl``.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from dreamfleet.engine.models import list_models

from . import hardware
from .rows import append_rows

log = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
PHOTO = Path(__file__).resolve().parent.parent / "data" / "samples" / "coffee.png"


def photo(w: int, h: int) -> torch.Tensor:
    """coffee.png resized (bicubic) to [1,3,h,w] pixels in [0,1]."""
    import numpy as np
    from PIL import Image

    img = Image.open(PHOTO).convert("RGB").resize((w, h), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def normalized(g: torch.Tensor) -> torch.Tensor:
    return g / g.abs().mean()


def measure_model(model: str, tile: int, size: tuple[int, int], overlaps: list[int], batch: int) -> list[dict]:
    from dreamfleet.engine.backends.eager import EagerBackend
    from dreamfleet.engine.build import build_dream_model
    from dreamfleet.engine.config import make_config
    from dreamfleet.engine.space import ImageSpace
    from dreamfleet.engine.tiling import tile_grid, tiled_gradient, window_side

    cfg = make_config(overrides=dict(model=model, random_weights=model != "bvlc_googlenet"))
    dm = build_dream_model(cfg.model, cfg.layer, cfg.objective, cfg.channels, cfg.weights, cfg.random_weights)
    backend = EagerBackend(dm.module, torch.device("cpu"))
    w, h = size
    z = ImageSpace.create(dm.spec, cfg, torch.device("cpu"), torch.float32).to_model(photo(w, h))  # [1,3,h,w]
    _, full = backend.step(z)
    ref = normalized(full)
    rows = []
    for ov in overlaps:
        t0 = time.perf_counter()
        got = normalized(tiled_gradient(backend.step, z, tile, ov, batch))
        rel = float((got - ref).norm() / ref.norm())
        cos = float(torch.nn.functional.cosine_similarity(got.flatten().double(), ref.flatten().double(), dim=0))
        side = window_side(tile, ov)
        n_tiles = len(tile_grid(h, w, tile, ov))
        row = dict(model=model, layer=cfg.layer, weights="random" if cfg.random_weights else "pretrained (vendored)",
                   tile=tile, overlap=ov, window=side, width=w, height=h, tiles=n_tiles,
                   area_ratio=round(n_tiles * side * side / (w * h), 3), rel_l2=round(rel, 5), cosine=round(cos, 6),
                   seconds=round(time.perf_counter() - t0, 2), env=hardware.environment(torch.device("cpu")),
                   timestamp=hardware.now_utc())
        log.info("%s T=%d overlap=%d: rel L2 %.4f, cosine %.5f", model, tile, ov, rel, cos)
        rows.append(row)
    backend.close()
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one line per (model, tile, size), one column per overlap."""
    overlaps = sorted({r["overlap"] for r in rows})
    keys = list(dict.fromkeys((r["model"], r["layer"], r["weights"], r["tile"], r["width"], r["height"]) for r in rows))
    out = ["| model, layer (weights) | tile | image | " + " | ".join(f"overlap {o}" for o in overlaps) + " |",
           "|---|---|---|" + "---|" * len(overlaps)]
    for m, layer, wts, t, w, h in keys:
        cells = {r["overlap"]: r["rel_l2"] for r in rows if (r["model"], r["tile"], r["width"], r["height"]) == (m, t, w, h)}
        out.append(f"| {m} {layer} ({wts}) | {t} | {w}x{h} | "
                   + " | ".join(f"{cells[o]:.4f}" if o in cells else "" for o in overlaps) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dreamfleet.benchmarks.tile_error", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(list_models()), help="comma-separated registry names (default: all)")
    p.add_argument("--tile", type=int, default=256, help="tile core side, px (default 256)")
    p.add_argument("--size", default="768x512", help="image WxH (default 768x512)")
    p.add_argument("--overlaps", default="0,16,32,64,96,128", help="overlaps to measure, px")
    p.add_argument("--batch", type=int, default=4, help="tiles per step (default 4)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=str(RESULTS / "tile_error.jsonl"), help="JSON rows are appended here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    overlaps = [int(v) for v in args.overlaps.split(",")]
    rows: list[dict] = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        new = measure_model(model, args.tile, (w, h), overlaps, args.batch)
        append_rows(args.out, new)
        rows += new
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
