"""How the image is represented: the model's normalized input space and the ascent update in it.

The loop keeps each image as ``z = (pixels - mean) / std`` (what the model's first layer
sees). Step sizes are given in *units*: ``pixel`` means 0-255 pixel units (Google's
notebook worked in Caffe's 0-255 space), ``normalized`` means model-input units (the seed
article). Both the gradient normalization and the step happen in those units, so the
``classic`` preset performs Google's exact update, expressed in normalized coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import DreamConfig
from .models import ModelSpec


@dataclass
class ImageSpace:
    mean: torch.Tensor  # [1, 3, 1, 1]
    std: torch.Tensor  # [1, 3, 1, 1]
    unit: torch.Tensor  # [1, 3, 1, 1] one step unit, in normalized coordinates
    lo: torch.Tensor  # [1, 3, 1, 1] clamp bounds, normalized
    hi: torch.Tensor  # [1, 3, 1, 1]

    @classmethod
    def create(cls, spec: ModelSpec, cfg: DreamConfig, device: torch.device, dtype: torch.dtype) -> "ImageSpace":
        def vec(v) -> torch.Tensor:
            return torch.tensor(v, dtype=dtype, device=device).view(1, 3, 1, 1)

        mean, std = vec(spec.mean), vec(spec.std)
        unit = 1.0 / (255.0 * std) if cfg.step_units == "pixel" else torch.ones_like(std)
        rng = cfg.clamp_range()
        if rng is None:  # the valid pixel range [0, 1], normalized
            lo, hi = (0.0 - mean) / std, (1.0 - mean) / std
        else:
            lo, hi = torch.full_like(std, rng[0]), torch.full_like(std, rng[1])
        return cls(mean, std, unit, lo, hi)

    def to_model(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels[N,3,H,W] in [0,1] -> z[N,3,H,W]."""
        return (pixels - self.mean) / self.std

    def to_pixels(self, z: torch.Tensor) -> torch.Tensor:
        """z[N,3,H,W] -> pixels[N,3,H,W] (not clamped)."""
        return z * self.std + self.mean

    def update(self, z: torch.Tensor, grad: torch.Tensor, step: float, grad_norm: str) -> torch.Tensor:
        """One ascent update, the gradient normalized per image (never over the batch).

        In step units u = z / unit: g_u = grad * unit, du = step * g_u / |g_u|, dz = du * unit.
        """
        g = grad * self.unit  # [N, 3, H, W]
        if grad_norm == "mean_abs":
            scale = g.abs().mean(dim=(1, 2, 3), keepdim=True)  # [N, 1, 1, 1]
        elif grad_norm == "l2":
            scale = torch.linalg.vector_norm(g.flatten(1), dim=1).view(-1, 1, 1, 1)  # [N, 1, 1, 1]
        else:
            raise ValueError(f"unknown grad_norm {grad_norm!r}; valid: mean_abs, l2")
        # z + (step*unit)*g / scale, then the clamp: a fixed number of ops whatever N is
        z = torch.addcdiv(z, (step * self.unit) * g, scale.clamp_min(torch.finfo(g.dtype).tiny))
        return torch.clamp(z, self.lo, self.hi)  # lo < hi: equals maximum(minimum(z, hi), lo)
