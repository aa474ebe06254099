"""The resize policy: which working size each image is dreamed at.

``fixed_size`` > 0 resizes everything to a square (the seed article's 224x224). Otherwise
the image is scaled so its longer side is at most ``max_side`` (never enlarged), aspect
ratio kept, and both sides are rounded to a multiple of ``snap``: a folder of photos falls
into a handful of identical shapes, which the loop batches as buckets. Rounding bends the
aspect ratio by at most snap/2 pixels per side.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import DreamConfig


def working_size(width: int, height: int, cfg: DreamConfig) -> tuple[int, int]:
    """(H, W) the image is dreamed at."""
    if cfg.fixed_size:
        return cfg.fixed_size, cfg.fixed_size
    scale = 1.0
    if cfg.max_side and max(width, height) > cfg.max_side:
        scale = cfg.max_side / max(width, height)

    def snap(v: float) -> int:
        return max(cfg.snap, int(round(v / cfg.snap)) * cfg.snap)

    h, w = snap(height * scale), snap(width * scale)
    if cfg.max_side:  # rounding up must not break the limit
        limit = max(cfg.snap, (cfg.max_side // cfg.snap) * cfg.snap)
        h, w = min(h, limit), min(w, limit)
    return h, w


def to_tensor(rgb: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """rgb [H0,W0,3] float in [0,1] -> [3,H,W] float32 resized (antialiased bilinear) to hw."""
    x = torch.from_numpy(np.array(rgb, dtype=np.float32, copy=True)).permute(2, 0, 1)[None]  # [1,3,H0,W0]
    if tuple(x.shape[-2:]) != tuple(hw):
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp(0.0, 1.0)
    return x[0]
