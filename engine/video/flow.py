"""Optical flow between consecutive source frames, its reliability mask, and scene cuts (OpenCV DIS, numpy).

Convention (the one the device warp uses): ``flow`` is the **backward** flow, [H, W, 2] float32
in pixels, channel 0 = dx (along width), channel 1 = dy (along height). For each pixel (x, y) of
the current frame, ``(x + dx, y + dy)`` is where that content was in the previous frame, so
``warp(prev, flow)(x, y) = prev(x + dx, y + dy)`` (bilinear) lines the previous frame up with the
current one. With ``torch.nn.functional.grid_sample(..., align_corners=True)`` the grid is
``gx = 2 * (x + dx) / (W - 1) - 1``, ``gy = 2 * (y + dy) / (H - 1) - 1``, in (x, y) order as here;
``padding_mode="border"`` matches :func:`warp_np` (tested).

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
    xs = np.ascontiguousarray(np.broadcast_to(np.arange(w, dtype=np.float32), (h, w)))
    ys = np.ascontiguousarray(np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w)))
    return xs, ys


def warp_np(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``img`` [H, W, C] (or [H, W]) sampled at (x + dx, y + dy): bilinear, edge pixels repeated outside."""
    import cv2

    xs, ys = _grid(*flow.shape[:2])
    return cv2.remap(img, xs + flow[..., 0], ys + flow[..., 1], interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


class _Scratch:
    """Arrays for one frame shape, reused pair after pair: a frame's check allocates nothing, so no freed
    block is trimmed and faulted in again (that doubled the cost per pair under the job's allocator)."""

    def __init__(self, h: int, w: int):
        self.shape = (h, w)
        self.xs, self.ys = _grid(h, w)
        self.mx, self.my, self.t1, self.t2, self.t3 = (np.empty((h, w), np.float32) for _ in range(5))
        self.bx, self.by = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
        self.fwd_at, self.sq = np.empty((h, w, 2), np.float32), np.empty((h, w, 2), np.float32)
        self.ok, self.tb = np.empty((h, w), bool), np.empty((h, w), bool)
        self.warped = np.empty((h, w), np.uint8)

    def sq_norm(self, v: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out = |v|^2 per pixel for a [H, W, 2] field."""
        np.multiply(v, v, out=self.sq)
        return np.add(self.sq[..., 0], self.sq[..., 1], out=out)


def reliability(back: np.ndarray, fwd: np.ndarray, scratch: _Scratch | None = None) -> np.ndarray:
    """[H, W] bool: backward flow ``back`` agrees with forward flow ``fwd`` and lands inside the previous frame."""
    import cv2

    h, w = back.shape[:2]
    s = scratch or _Scratch(h, w)
    np.add(s.xs, back[..., 0], out=s.mx)
    np.add(s.ys, back[..., 1], out=s.my)  # where each pixel of cur was in prev
    ok, tb = s.ok, s.tb
    np.greater_equal(s.mx, 0, out=ok)
    for arr, lo_hi in ((s.mx, (None, w - 1)), (s.my, (0, h - 1))):
        if lo_hi[0] is not None:
            ok &= np.greater_equal(arr, lo_hi[0], out=tb)
        ok &= np.less_equal(arr, lo_hi[1], out=tb)
    cv2.remap(fwd, s.mx, s.my, cv2.INTER_LINEAR, dst=s.fwd_at, borderMode=cv2.BORDER_REPLICATE)  # fwd at source
    a, c = CONSISTENCY
    s.sq_norm(s.fwd_at, s.t3)
    s.t3 += s.sq_norm(back, s.t2)  # |f|^2 + |b|^2
    s.sq_norm(np.add(back, s.fwd_at, out=s.fwd_at), s.t1)  # |b + f|^2, ~0 where the two flows agree
    s.t3 *= a
    s.t3 += c
    ok &= np.less_equal(s.t1, s.t3, out=tb)
    s.t1.fill(0)  # |grad b|^2: central differences, as np.gradient
    cv2.split(back, [s.bx, s.by])
    for ch in (s.bx, s.by):
        for dx, dy in ((1, 0), (0, 1)):
            cv2.Sobel(ch, cv2.CV_32F, dx, dy, dst=s.t3, ksize=1, scale=0.5)
            cv2.accumulateSquare(s.t3, s.t1)
    ea, eb = MOTION_EDGE
    s.t2 *= ea  # t2 still holds |b|^2
    s.t2 += eb
    ok &= np.less_equal(s.t1, s.t2, out=tb)
    return ok.copy()


class FlowEstimator:
    """One DIS instance reused for a stream of pairs (one per decode thread; not shared across threads)."""

    def __init__(self, preset: str = "fast", max_side: int | None = None):
        self.preset = preset
        self.max_side = max_side  # larger frames: flow computed on a copy this size, then scaled up
        self._dis = _dis(preset)
        self._scratch: _Scratch | None = None  # buffers for the current frame shape
        self._last: tuple | None = None  # (the last current frame [H,W,3], its gray [h,w]): the next pair's previous

    def __call__(self, prev_rgb: np.ndarray, cur_rgb: np.ndarray) -> FlowPair:
        if prev_rgb.shape != cur_rgb.shape:
            raise ValueError(f"frames differ in shape: {prev_rgb.shape} vs {cur_rgb.shape}")
        h, w = cur_rgb.shape[:2]
        small = self.max_side is not None and max(h, w) > self.max_side
        prev = self._last[1] if self._last is not None and self._last[0] is prev_rgb else self._gray(prev_rgb, small)
        cur = self._gray(cur_rgb, small)
        self._last = (cur_rgb, cur)  # a stream's frame is the current one, then the previous one: gray it once
        pair = self._pair(prev, cur)
        return _scaled_up(pair, (h, w)) if small else pair

    def _gray(self, rgb: np.ndarray, small: bool) -> np.ndarray:
        return _small_gray(rgb, self.max_side) if small else _gray(rgb)

    def _pair(self, prev: np.ndarray, cur: np.ndarray) -> FlowPair:
        import cv2

        if self._scratch is None or self._scratch.shape != cur.shape:
            self._scratch = _Scratch(*cur.shape)
        s = self._scratch
        back = self._dis.calc(cur, prev, None)  # [H, W, 2]: cur(x) ~ prev(x + back(x))
        fwd = self._dis.calc(prev, cur, None)  # [H, W, 2]: prev(x) ~ cur(x + fwd(x))
        reliable = reliability(back, fwd, s)  # leaves s.mx, s.my = x + back
        cv2.remap(prev, s.mx, s.my, cv2.INTER_LINEAR, dst=s.warped, borderMode=cv2.BORDER_REPLICATE)
        residual = cv2.mean(cv2.absdiff(cur, s.warped, dst=s.warped))[0] / 255
        cut = residual > CUT_RESIDUAL or reliable.mean() < CUT_RELIABLE
        if cut:
            reliable[:] = False
        return FlowPair(back, reliable, bool(cut), float(residual))


def _small_gray(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """[h, w] uint8 gray of ``rgb``, longest side ``max_side`` (area filter)."""
    import cv2

    h, w = rgb.shape[:2]
    k = max_side / max(h, w)
    return cv2.resize(_gray(rgb), (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)


def _scaled_up(pair: FlowPair, hw: tuple[int, int]) -> FlowPair:
    """A pair computed on a smaller copy, at full size [H, W]: flow resized and its vectors scaled, mask nearest."""
    import cv2

    h, w = hw
    sh, sw = pair.reliable.shape
    flow = cv2.resize(pair.flow, (w, h), interpolation=cv2.INTER_LINEAR)
    flow[..., 0] *= w / sw
    flow[..., 1] *= h / sh
    reliable = cv2.resize(pair.reliable.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return FlowPair(flow, reliable, pair.cut, pair.residual)


def with_flow(frames, preset: str = "fast", max_side: int | None = None):
    """(frame, FlowPair | None) for a stream of frames (None for the first): the decode thread's loop."""
    estimator = FlowEstimator(preset, max_side)
    prev = None
    for frame in frames:
        yield frame, (None if prev is None else estimator(prev.rgb, frame.rgb))
        prev = frame


def flow_pair(prev_rgb: np.ndarray, cur_rgb: np.ndarray, preset: str = "fast") -> FlowPair:
    """Backward flow, reliability and cut for two [H, W, 3] uint8 frames (see :class:`FlowEstimator`)."""
    return FlowEstimator(preset)(prev_rgb, cur_rgb)


__all__ = ["FlowEstimator", "FlowPair", "PRESETS", "flow_pair", "reliability", "warp_np", "with_flow"]
