"""Augmentation: random roll jitter with one RNG stream per image.

Each image's stream is seeded from the job seed and the image's identity (its relative
path), so the shifts an image sees do not depend on which batch it landed in. The roll
is undone after each step (Google's notebook rolls the image, steps, rolls back).
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def image_rng(seed: int, key: str) -> np.random.Generator:
    """Independent, reproducible stream for one image of one job."""
    digest = int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, digest])


def draw_shifts(rngs: list[np.random.Generator], jitter: int) -> list[tuple[int, int]]:
    """One (dy, dx) in [-jitter, jitter] per image; no draw at all when jitter is 0."""
    if jitter <= 0:
        return [(0, 0)] * len(rngs)
    out = []
    for rng in rngs:
        dx, dy = rng.integers(-jitter, jitter + 1, size=2)  # Google's order: ox, oy
        out.append((int(dy), int(dx)))
    return out


def roll(x: torch.Tensor, shifts: list[tuple[int, int]], sign: int = 1) -> torch.Tensor:
    """Roll each image x[i] ([3,H,W]) by sign*shifts[i] over (H, W); x: [N,3,H,W]."""
    if all(s == (0, 0) for s in shifts):
        return x
    if len(set(shifts)) == 1:
        dy, dx = shifts[0]
        return torch.roll(x, (sign * dy, sign * dx), dims=(2, 3))
    return torch.stack([torch.roll(xi, (sign * dy, sign * dx), dims=(1, 2)) for xi, (dy, dx) in zip(x, shifts)])
