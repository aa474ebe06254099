"""The octave pyramid and the shape planner.

Octave sizes follow ``torch.nn.functional.interpolate(scale_factor=1/scale)`` exactly
(floor of size / scale, computed in double), so the planner and the loop agree.
``plan_shapes`` is the one pure function that lists every (N, H, W) batch shape a job
runs, octaves included: torch.compile warms up on it and TensorRT builds profiles from it.
"""
from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F

from .tiling import needs_tiling, window_side


def octave_sizes(h: int, w: int, octaves: int, scale: float) -> list[tuple[int, int]]:
    """Sizes from the full image down: [(h, w), (floor(h/s), floor(w/s)), ...]."""
    sizes = [(h, w)]
    for _ in range(octaves - 1):
        ph, pw = sizes[-1]
        sizes.append((math.floor(float(ph) * (1.0 / scale)), math.floor(float(pw) * (1.0 / scale))))
    return sizes


def usable_octaves(h: int, w: int, octaves: int, scale: float, min_size: int) -> int:
    """How many octaves keep the smallest level at or above ``min_size``; raises if none do."""
    if min(h, w) < min_size:
        raise ValueError(f"image {w}x{h} is smaller than the model's minimum input of {min_size} px")
    n = octaves
    while n > 1 and min(octave_sizes(h, w, n, scale)[-1]) < min_size:
        n -= 1
    return n


def build_pyramid(x: torch.Tensor, octaves: int, scale: float, mode: str) -> list[torch.Tensor]:
    """x[N,3,H,W] -> [x, x/scale, x/scale^2, ...] (largest first), each from the previous."""
    kw = {"align_corners": False} if mode == "bilinear" else {}
    levels = [x]
    for _ in range(octaves - 1):
        levels.append(F.interpolate(levels[-1], scale_factor=1.0 / scale, mode=mode, **kw))
    return levels


def resize_to(x: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    """x[N,C,h,w] -> [N,C,*hw]; used to carry detail up an octave."""
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x, size=hw, mode=mode, **kw)


def batch_sizes(count: int, batch_size: int) -> list[int]:
    """How a bucket of ``count`` images is cut into batches."""
    full, rest = divmod(count, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def plan_shapes(image_sizes: list[tuple[int, int]], batch_size: int, octaves: int, scale: float,
                min_size: int, tile: int = 0, tile_overlap: int = 0) -> list[tuple[int, int, int]]:
    """Every (N, H, W) the job will run, for images of the given (working) sizes.

    Images are bucketed by identical size and cut into batches of ``batch_size``; each batch
    runs every usable octave. Sizes too small for the model are left out (they fail).
    With ``tile`` > 0, images larger than one tile window go to the tile scheduler: their
    large octaves run as (batch_size, S, S) tile batches, their small octaves in batches of
    up to min(count, batch_size) images (see ``engine.tiled``).
    """
    shapes: set[tuple[int, int, int]] = set()
    for (h, w), count in Counter(image_sizes).items():
        try:
            n_oct = usable_octaves(h, w, octaves, scale, min_size)
        except ValueError:
            continue
        # --- tiling (issue 10) ---
        if needs_tiling(h, w, tile, tile_overlap):
            for oh, ow in octave_sizes(h, w, n_oct, scale):
                side = window_side(tile, tile_overlap)
                tiled = needs_tiling(oh, ow, tile, tile_overlap)
                shapes.add((batch_size, side, side) if tiled else (min(count, batch_size), oh, ow))
            continue
        for n in set(batch_sizes(count, batch_size)):
            for oh, ow in octave_sizes(h, w, n_oct, scale):
                shapes.add((n, oh, ow))
    return sorted(shapes)


__all__ = ["batch_sizes", "build_pyramid", "octave_sizes", "plan_shapes", "resize_to", "usable_octaves"]
