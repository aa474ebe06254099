"""Augmentation: random roll jitter with one RNG stream per image.

Each image's stream is seeded from the job seed and the image's identity (its relative
path), so the shifts an image sees do not depend on which batch it landed in. The roll
is undone after each step (Google's notebook rolls the image, steps, rolls back).

The octave loop draws every shift of a dream up front (:class:`JitterSchedule`: the same
numbers, in the same order, as one draw per step) and uploads them to the device once, so
the step loop never copies from the host. Every image of a batch is rolled by its own shift
with one gather (:func:`roll_indexed`, :func:`roll_batched`), so the tensor operations per
step do not depend on the batch size.
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


def draw_all_shifts(rngs: list[np.random.Generator], jitter: int, steps: int) -> np.ndarray:
    """shifts[steps, N, 2] as (dy, dx): exactly what ``steps`` calls of :func:`draw_shifts` return."""
    out = np.zeros((steps, len(rngs), 2), dtype=np.int64)
    if jitter > 0:
        for i, rng in enumerate(rngs):
            out[:, i, :] = rng.integers(-jitter, jitter + 1, size=(steps, 2))[:, ::-1]  # drawn (dx, dy)
    return out


def roll_batched(x: torch.Tensor, shifts: torch.Tensor, sign: int = 1) -> torch.Tensor:
    """x[N,C,H,W] with image i rolled by sign*shifts[i] = (dy, dx) over (H, W); one gather.

    Equals ``torch.roll(x[i], (sign*dy, sign*dx), dims=(1, 2))`` for every i, bit for bit
    (it only moves values). ``shifts``: [N, 2] int64 on x's device.
    """
    n, c, h, w = x.shape
    dev = x.device
    rows = torch.remainder(torch.arange(h, device=dev)[None, :] - sign * shifts[:, :1], h)  # [N, H]
    cols = torch.remainder(torch.arange(w, device=dev)[None, :] - sign * shifts[:, 1:], w)  # [N, W]
    index = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)  # [N, C, H*W]
    return torch.gather(x.reshape(n, c, h * w), 2, index).view(n, c, h, w)


def _flat_index(rows: torch.Tensor, cols: torch.Tensor, w: int) -> torch.Tensor:
    """rows[N,H], cols[N,W] -> flat source index [N, H*W] (one kernel)."""
    n = rows.shape[0]
    return torch.add(cols[:, None, :], rows[:, :, None], alpha=w).view(n, -1)


def roll_indexed(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[N,C,H,W] gathered through a flat per-image index [N, H*W]: one gather for the batch."""
    n, c, h, w = x.shape
    return torch.gather(x.reshape(n, c, h * w), 2, index[:, None, :].expand(n, c, h * w)).view(n, c, h, w)


class JitterSchedule:
    """Every shift of one dream, drawn once and held on the device; ``next_index`` walks the steps.

    Per octave size the row and column tables of every step are built once (a few small ops);
    a step then costs one add (its flat index) and one gather per roll, whatever the batch size.
    """

    def __init__(self, rngs: list[np.random.Generator], jitter: int, steps: int, device: torch.device) -> None:
        self.host = draw_all_shifts(rngs, jitter, steps)  # [steps, N, 2]
        self.active = self.host.reshape(steps, -1).any(axis=1)  # [steps] bool: any image moves
        t = torch.from_numpy(self.host)
        if device.type == "cuda":
            t = t.pin_memory().to(device, non_blocking=True)  # one upload per dream, no sync
        self.device_shifts = t.to(device)  # [steps, N, 2]
        self.cursor = 0
        self._tables: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}

    def _table(self, h: int, w: int) -> tuple[torch.Tensor, ...]:
        """(rows_fwd[steps,N,H], cols_fwd[steps,N,W], rows_back, cols_back) for an h x w octave."""
        if (h, w) not in self._tables:
            dev = self.device_shifts.device
            dy, dx = self.device_shifts[..., 0:1], self.device_shifts[..., 1:2]  # [steps, N, 1]
            ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
            self._tables = {(h, w): (torch.remainder(ar_h - dy, h), torch.remainder(ar_w - dx, w),
                                     torch.remainder(ar_h + dy, h), torch.remainder(ar_w + dx, w))}
        return self._tables[(h, w)]

    def next_step(self, h: int, w: int) -> int | None:
        """Advance to the next step of an h x w octave: its number, or None when no image moves in it."""
        s = self.cursor
        if s >= len(self.host):
            raise IndexError(f"jitter schedule exhausted after {s} steps")
        self.cursor += 1
        if not self.active[s]:
            return None
        self._table(h, w)  # the octave's tables, built at its first step
        return s

    def index(self, s: int, h: int, w: int, back: bool = False) -> torch.Tensor:
        """Step s's flat roll (``back``: unroll) index [N, H*W]. Made when needed, so a large image never
        holds both (two int64 indices are 16 bytes per pixel per image) while its gradient is computed."""
        rf, cf, rb, cb = self._table(h, w)
        return _flat_index(rb[s], cb[s], w) if back else _flat_index(rf[s], cf[s], w)

    def next_index(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The next step's (roll, unroll) flat indices [N, H*W] on the device, or None when no image moves."""
        s = self.next_step(h, w)
        return None if s is None else (self.index(s, h, w), self.index(s, h, w, back=True))


def roll(x: torch.Tensor, shifts: list[tuple[int, int]], sign: int = 1) -> torch.Tensor:
    """Roll each image x[i] ([3,H,W]) by sign*shifts[i] over (H, W); x: [N,3,H,W]."""
    if all(s == (0, 0) for s in shifts):
        return x
    return roll_batched(x, torch.tensor(shifts, dtype=torch.int64, device=x.device), sign)
