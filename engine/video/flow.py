"""Optical flow between consecutive source frames, its reliability mask, and scene cuts (OpenCV DIS, numpy).

Convention (the one the device warp uses): ``flow`` is the **backward** flow, [H, W, 2] float32
in pixels, channel 0 = dx (along width), channel 1 = dy (along height). For each pixel (x, y) of
the current frame, ``(x + dx, y + dy)`` is where that content was in the previous frame, so
``warp(prev, flow)(x, y) = prev(x + dx, y + dy)`` (bilinear) lines the previous frame up with the
current one. With ``torch.nn.functional.grid_sample(..., align_corners=True)`` the grid is
``gx = 2 * (x + dx) / (W - 1) - 1``, ``gy = 2 * (y + dy) / (H - 1) - 1``, in (x, y) order as here.

``reliable`` is False where the forward-backward check fails (occlusions, disocclusions, content
that came in over the border) and at motion boundaries (Sundaram et al. 2010, as in Ruder et al.
2016). ``cut`` is a scene cut: the previous frame, warped, still explains too little of the
current one; then ``reliable`` is all False and the chain restarts. Pure numpy/cv2: it runs on
the decode threads (OpenCV's own threading is off, so threads do not fight over the cores).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRESETS = ("ultrafast", "fast", "medium")
CONSISTENCY = (0.01, 0.5)  # |f + b|^2 <= a (|f|^2 + |b|^2) + b   (Sundaram et al.)
MOTION_EDGE = (0.01, 0.002)  # |grad b|^2 > a |b|^2 + b  marks a motion boundary
CUT_RESIDUAL = 0.12  # mean |cur - warp(prev)| (0..1) above this is a cut
CUT_RELIABLE = 0.2  # or: fewer than this fraction of pixels reliable


@dataclass
class FlowPair:
    flow: np.ndarray  # [H, W, 2] float32 backward flow (dx, dy): cur (x, y) came from prev (x + dx, y + dy)
    reliable: np.ndarray  # [H, W] bool: carry the previous dream here
    cut: bool  # scene cut: nothing carries over (reliable all False)
    residual: float = 0.0  # mean |cur - warp(prev)| over the frame, 0..1 (the cut score)


def _gray(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)  # [H, W] uint8


def _dis(preset: str):
    import cv2

    if preset not in PRESETS:
        raise ValueError(f"unknown flow preset {preset!r}; choose one of {list(PRESETS)}")
    cv2.setNumThreads(1)
    return cv2.DISOpticalFlow_create(PRESETS.index(preset))  # 0 ultrafast, 1 fast, 2 medium


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (xs, ys) [H, W] float32."""
    xs = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w))
    ys = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    return xs, ys


def _sample_points(flow: np.ndarray, grid=None) -> tuple[np.ndarray, np.ndarray]:
    """Absolute sampling coordinates (map_x, map_y) [H, W] float32 for a backward flow."""
    import cv2

    xs, ys = grid if grid is not None else _grid(*flow.shape[:2])
    dx, dy = cv2.split(flow)
    return xs + dx, ys + dy


def warp_np(img: np.ndarray, flow: np.ndarray, grid=None) -> np.ndarray:
    """``img`` [H, W, C] (or [H, W]) sampled at (x + dx, y + dy): bilinear, edge pixels repeated outside."""
    import cv2

    mx, my = _sample_points(flow, grid)
    return cv2.remap(img, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def reliability(back: np.ndarray, fwd: np.ndarray, grid=None) -> np.ndarray:
    """[H, W] bool: backward flow ``back`` agrees with forward flow ``fwd`` and lands inside the previous frame."""
    import cv2

    h, w = back.shape[:2]
    mx, my = _sample_points(back, grid)
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    fx, fy = cv2.split(cv2.remap(fwd, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))  # fwd at source
    bx, by = cv2.split(back)
    b2, f2 = bx * bx + by * by, fx * fx + fy * fy
    sx, sy = bx + fx, by + fy  # ~0 where the two flows agree
    a, c = CONSISTENCY
    agree = sx * sx + sy * sy <= a * (b2 + f2) + c
    grad = np.zeros_like(b2)
    for ch in (bx, by):  # central differences, as np.gradient
        for dx, dy in ((1, 0), (0, 1)):
            g = cv2.Sobel(ch, cv2.CV_32F, dx, dy, ksize=1, scale=0.5)
            grad += g * g
    ea, eb = MOTION_EDGE
    return inside & agree & (grad <= ea * b2 + eb)


class FlowEstimator:
    """One DIS instance reused for a stream of pairs (one per decode thread; not shared across threads)."""

    def __init__(self, preset: str = "fast"):
        self.preset = preset
        self._dis = _dis(preset)
        self._grid: tuple[np.ndarray, np.ndarray] | None = None  # pixel coordinates for the current shape

    def __call__(self, prev_rgb: np.ndarray, cur_rgb: np.ndarray) -> FlowPair:
        import cv2

        if prev_rgb.shape != cur_rgb.shape:
            raise ValueError(f"frames differ in shape: {prev_rgb.shape} vs {cur_rgb.shape}")
        prev, cur = _gray(prev_rgb), _gray(cur_rgb)
        if self._grid is None or self._grid[0].shape != cur.shape:
            self._grid = _grid(*cur.shape)
        back = self._dis.calc(cur, prev, None)  # [H, W, 2]: cur(x) ~ prev(x + back(x))
        fwd = self._dis.calc(prev, cur, None)  # [H, W, 2]: prev(x) ~ cur(x + fwd(x))
        reliable = reliability(back, fwd, self._grid)
        residual = float(cv2.absdiff(cur, warp_np(prev, back, self._grid)).mean() / 255)
        cut = residual > CUT_RESIDUAL or reliable.mean() < CUT_RELIABLE
        if cut:
            reliable = np.zeros_like(reliable)
        return FlowPair(back.astype(np.float32, copy=False), reliable, bool(cut), residual)


def flow_pair(prev_rgb: np.ndarray, cur_rgb: np.ndarray, preset: str = "fast") -> FlowPair:
    """Backward flow, reliability and cut for two [H, W, 3] uint8 frames (see :class:`FlowEstimator`)."""
    return FlowEstimator(preset)(prev_rgb, cur_rgb)


__all__ = ["FlowEstimator", "FlowPair", "PRESETS", "flow_pair", "reliability", "warp_np"]
