"""Gradient smoothing: a Gaussian blur or Laplacian-pyramid band normalization, per image.

Applied by the loop to the backend's gradient (rolled back to the image frame) just before
the update, so it works the same for every backend. Both modes are batched tensor ops with
no per-image Python loop and no host sync (kernels are made on the device, never copied from
host lists), and neither couples the images of a batch:

- ``gaussian``: a separable depthwise blur (replicate padding, kernel radius ceil(3 sigma));
  sigma goes linearly from START at an octave's first iteration to END at its last
  (pytorch-deepdream lets it grow the same way).
- ``laplacian``: the TensorFlow DeepDream notebook's lapnorm. The gradient is split into
  ``levels`` bands (levels - 1 band-pass bands and the low-pass residual) with the 5x5
  binomial kernel, each band is divided by its own per-image root-mean-square (lapnorm's
  ``normalize_std``: the std about zero, over channels and pixels) and the bands are added
  back. Down-sampling is a stride-2 blur, up-sampling the transposed blur divided by its
  response to ones, so borders and odd sizes stay exact and a constant passes through.

Both act in step units (gradient x ``unit``), where the update measures the gradient.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sigma_at(start: float, end: float, it: int, iterations: int) -> float:
    """Linear sigma schedule over one octave: START at iteration 0, END at iteration ``iterations - 1``."""
    if iterations <= 1:
        return float(start)
    return float(start) + (float(end) - float(start)) * it / (iterations - 1)


def gaussian_kernel1d(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalized 1-D Gaussian taps [2r+1], r = ceil(3 sigma)."""
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _separable(x: torch.Tensor, taps: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Depthwise separable filter of x[N,C,H,W] with taps[K] (odd K), replicate-padded."""
    c, r = x.shape[1], taps.numel() // 2
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), stride=(1, stride), groups=c)
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), stride=(stride, 1), groups=c)


def gaussian_blur(g: torch.Tensor, sigma: float) -> torch.Tensor:
    """g[N,C,H,W] -> blurred [N,C,H,W]; sigma <= 0 returns g itself."""
    if sigma <= 0:
        return g
    return _separable(g, gaussian_kernel1d(sigma, g.device, g.dtype))


def _binomial(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[1, 4, 6, 4, 1] / 16 built on the device (6 - 1.5|t| - 0.5t^2 is exact): no host-to-device copy."""
    t = torch.arange(-2, 3, device=device, dtype=dtype).abs()  # [5]
    return (6.0 - 1.5 * t - 0.5 * t * t) / 16.0


def _down(x: torch.Tensor) -> torch.Tensor:
    """x[N,C,H,W] -> [N,C,ceil(H/2),ceil(W/2)]: binomial blur, every second pixel."""
    return _separable(x, _binomial(x.device, x.dtype), stride=2)


def _up(lo: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """lo[N,C,h,w] -> [N,C,*hw]: transposed binomial blur (x2 per axis), normalized by its response to ones."""
    c, (h, w) = lo.shape[1], hw
    taps = 2.0 * _binomial(lo.device, lo.dtype)  # [5]: even and odd output phases each sum to 1
    k2 = torch.outer(taps, taps).view(1, 1, 5, 5)  # [1,1,5,5]
    pad = (h - (2 * lo.shape[2] - 1), w - (2 * lo.shape[3] - 1))  # output_padding: 0 or 1 per axis
    up = F.conv_transpose2d(lo, k2.expand(c, 1, 5, 5), stride=2, padding=2, output_padding=pad, groups=c)
    ones = torch.ones(1, 1, *lo.shape[2:], device=lo.device, dtype=lo.dtype)  # [1,1,h,w]
    norm = F.conv_transpose2d(ones, k2, stride=2, padding=2, output_padding=pad)  # [1,1,H,W], 1 inside
    return up / norm


def lap_split(g: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """g[N,C,H,W] -> ``levels`` bands, finest first, low-pass residual last; ``lap_merge`` inverts it."""
    bands = []
    for _ in range(levels - 1):
        lo = _down(g)  # [N,C,ceil(H/2),ceil(W/2)]
        bands.append(g - _up(lo, tuple(g.shape[-2:])))
        g = lo
    bands.append(g)
    return bands


def lap_merge(bands: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of ``lap_split``: coarsest up, adding each finer band."""
    g = bands[-1]
    for hi in reversed(bands[:-1]):
        g = _up(g, tuple(hi.shape[-2:])) + hi
    return g


def band_rms(x: torch.Tensor) -> torch.Tensor:
    """x[N,C,H,W] -> per-image root mean square [N,1,1,1]."""
    return x.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()


def normalized_bands(g: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """g[N,C,H,W] -> g's ``levels`` Laplacian bands, each divided by its own per-image RMS."""
    # a band's RMS is floored at sqrt(machine eps) x the whole gradient's (fp32: 3.5e-4): a band that weak
    # holds rounding noise only (e.g. the band-pass bands of a constant) and is not blown up to unit RMS
    floor = math.sqrt(torch.finfo(g.dtype).eps) * band_rms(g)  # [N,1,1,1]
    return [b / torch.maximum(band_rms(b), floor).clamp_min(torch.finfo(g.dtype).tiny)
            for b in lap_split(g, levels)]


def laplacian_normalize(g: torch.Tensor, levels: int) -> torch.Tensor:
    """g[N,C,H,W] -> [N,C,H,W]: lapnorm, the sum of g's per-image RMS-normalized Laplacian bands."""
    return lap_merge(normalized_bands(g, levels))


def smooth_gradient(grad: torch.Tensor, mode: str, sigma: tuple[float, float], levels: int, it: int,
                    iterations: int, unit: torch.Tensor | None = None) -> torch.Tensor:
    """grad[N,3,H,W] -> smoothed [N,3,H,W] (``mode`` none returns grad itself).

    ``it`` is the iteration within the octave (for the sigma schedule); ``unit`` [1,3,1,1]
    converts to step units and back (None: already in step units).
    """
    if mode == "none":
        return grad
    g = grad if unit is None else grad * unit  # [N,3,H,W] in step units
    if mode == "gaussian":
        g = gaussian_blur(g, sigma_at(sigma[0], sigma[1], it, iterations))
    elif mode == "laplacian":
        g = laplacian_normalize(g, levels)
    else:
        raise ValueError(f"unknown smooth mode {mode!r}; valid: none, gaussian, laplacian")
    return g if unit is None else g / unit
