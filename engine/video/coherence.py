"""Temporal coherence on the device: a frame's initial image from the previous frame's dream detail.

As in Ruder et al. (2016) and the flow-based DeepDream video projects, frame t starts from

    init_t = source_t + blend * warp(dream_{t-1} - source_{t-1}, flow_t)

where ``flow_t`` is the *backward* flow (for each pixel of frame t, its (dx, dy) offset into
frame t-1; ``engine.video.flow``), so the warp is one ``grid_sample`` gather. Pixels whose
flow is unreliable (forward-backward disagreement: occlusions, disocclusions) take the fresh
frame, as does the whole frame on a scene cut, on the first frame, and with ``--video-flow
none`` (independent frames). After the ascent, ``hold`` pulls each carried pixel part of the way
back to the warped previous dream (the temporal term of Ruder et al., as one step). Everything here
runs on the device, batched over the videos of one lockstep group. ``flicker`` is the temporal
metric of the benchmark and tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """x[N,C,H,W] sampled along the backward flow[N,H,W,2] (dx, dy px): out(p) = x(p + flow(p)), bilinear,
    edges repeated (the reliability mask drops what came from outside the frame)."""
    n, _, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)  # [1,H,1]
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)  # [1,1,W]
    flow = flow.to(device=x.device, dtype=x.dtype)
    gx = (xs + flow[..., 0]) * (2.0 / max(w - 1, 1)) - 1.0  # [N,H,W] in [-1, 1] (align_corners=True)
    gy = (ys + flow[..., 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1)  # [N,H,W,2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


HOLD = 0.5  # share of the way each carried pixel's dream is pulled back to its warped previous dream after the ascent


def carried(src: torch.Tensor, prev_src: torch.Tensor, prev_dream: torch.Tensor, flow: torch.Tensor,
            reliable: torch.Tensor, carry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(detail [N,3,H,W], keep [N,1,H,W] bool): the previous dream's detail (dream - source) moved along the
    backward flow onto this frame, and where it may be carried (reliable pixels of frames that carry)."""
    detail = warp(prev_dream - prev_src, flow)  # [N,3,H,W] the previous dream's detail, moved with the scene
    keep = (reliable.to(src.device) & carry.to(src.device).view(-1, 1, 1))[:, None]  # [N,1,H,W]
    return detail, keep


def initial_frames(src: torch.Tensor, prev_src: torch.Tensor, prev_dream: torch.Tensor, flow: torch.Tensor,
                   reliable: torch.Tensor, carry: torch.Tensor, blend: float) -> torch.Tensor:
    """The initial image of each frame of a lockstep batch, pixels [N,3,H,W] in [0,1].

    src, prev_src, prev_dream: [N,3,H,W] pixels (this frame, the previous source, the previous dream);
    flow: [N,H,W,2] backward flow; reliable: [N,H,W] bool; carry: [N] bool (False: first frame, a cut or
    independent frames: the fresh source). Frames that carry nothing are returned as ``src`` exactly.
    """
    if blend == 0.0 or not bool(carry.any()):
        return src
    return start_from(src, *carried(src, prev_src, prev_dream, flow, reliable, carry), blend)


def start_from(src: torch.Tensor, detail: torch.Tensor, keep: torch.Tensor, blend: float) -> torch.Tensor:
    """``src`` [N,3,H,W] plus ``blend`` of the carried detail where ``keep`` (``carried``), in [0,1]."""
    return torch.where(keep, (src + blend * detail).clamp(0.0, 1.0), src)


def hold(dream: torch.Tensor, src: torch.Tensor, detail: torch.Tensor, keep: torch.Tensor,
         weight: float = HOLD) -> torch.Tensor:
    """Ruder et al.'s temporal term as one step after the ascent: on carried pixels, the dream [N,3,H,W] moves
    ``weight`` of the way to this source plus the whole warped previous detail (``carried``). The ascent's
    fresh detail differs from frame to frame (each frame has its own jitter), and this step keeps only part
    of that change where the flow is reliable; occluded pixels, cuts and first frames keep the fresh dream."""
    if weight == 0.0:
        return dream
    target = (src + detail).clamp(0.0, 1.0)  # [N,3,H,W] the previous dream, moved onto this frame
    return torch.where(keep, dream + weight * (target - dream), dream)


def flicker(dream: torch.Tensor, prev_dream: torch.Tensor, src: torch.Tensor, prev_src: torch.Tensor,
            flow: torch.Tensor, reliable: torch.Tensor, agree: float = 2.0 / 255.0) -> float:
    """Mean |d_t - warp(d_{t-1})| over the pixels where the warped source frames agree (the benchmark's metric).

    All [N,3,H,W] pixels in [0,1] (flow [N,H,W,2], reliable [N,H,W] bool); ``agree``: max mean-over-channel
    |s_t - warp(s_{t-1})| for a pixel to count. Returns 0-255 levels.
    """
    ws = warp(prev_src, flow)
    mask = reliable.to(src.device) & ((src - ws).abs().mean(1) <= agree)  # [N,H,W]
    diff = (dream - warp(prev_dream, flow)).abs().mean(1)  # [N,H,W]
    return float(255.0 * diff[mask].mean()) if bool(mask.any()) else float("nan")


def strength(dream: torch.Tensor, src: torch.Tensor) -> float:
    """Dream strength: mean |dream - source| in 0-255 levels."""
    return float(255.0 * (dream - src).abs().mean())


def sequence_flicker(dreams: list, sources: list) -> tuple[float, float]:
    """(mean flicker, mean strength) in levels of a dreamed frame sequence against its sources.

    dreams, sources: uint8 [H,W,3] numpy frames in order; the flow between consecutive sources is DIS
    (``engine.video.flow``), the mask its reliability and where the warped sources agree (``flicker``)."""
    import numpy as np

    from .flow import flow_pair

    def px(f) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)[None].float() / 255.0  # [1,3,H,W]

    d, s = [px(f) for f in dreams], [px(f) for f in sources]
    values = []
    for k in range(1, len(d)):
        pair = flow_pair(sources[k - 1], sources[k])
        values.append(flicker(d[k], d[k - 1], s[k], s[k - 1], torch.from_numpy(pair.flow)[None],
                              torch.from_numpy(pair.reliable)[None]))
    return float(np.nanmean(values)), float(np.mean([strength(a, b) for a, b in zip(d, s)]))
