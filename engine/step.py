"""The one definition of the ascent gradient that every backend runs or exports.

``DreamObjective`` is the differentiable function ``x[N,3,H,W] -> objective[N]``:
the truncated feature module followed by the objective. Backends differ only in how
they evaluate it and its input gradient:

- torch eager / torch.compile call :func:`objective_and_grad` (autograd),
- the ONNX exporter traces ``torch.func.grad`` of ``DreamObjective.forward(x).sum()``.

Because images never interact (eval-mode model, per-image objective), the gradient of
the batch sum is exactly the stack of the per-image gradients.
"""
from __future__ import annotations

import torch
from torch import nn

from .objectives import GuideDistance, GuideDot, Weighted


class DreamObjective(nn.Module):
    """features (truncated model, returns {layer: act}) + objective -> per-image value."""

    def __init__(self, features: nn.Module, objective: Weighted, guide: torch.Tensor | None = None) -> None:
        super().__init__()
        self.features = features
        self.objective = objective
        # guide image in the model's normalized space, [1, 3, h, w]; only for guided objectives
        self.register_buffer("guide_image", guide if guide is not None else torch.zeros(0), persistent=False)
        self._guide_shape: tuple[int, int] | None = None
        self.needs_guide = any(isinstance(t, (GuideDot, GuideDistance)) for t in objective.terms)
        if self.needs_guide and guide is None:
            raise ValueError("objective 'guide'/'guide-distance' needs a guide image (--guide PATH)")

    @property
    def layers(self) -> list[str]:
        return self.objective.layers

    def _refresh_guide(self, hw: tuple[int, int], dtype: torch.dtype) -> None:
        """Compute guide features once (dot) or once per input size (distance)."""
        per_shape = any(isinstance(t, GuideDistance) for t in self.objective.terms)
        key = hw if per_shape else (-1, -1)
        if self._guide_shape == key:
            return
        g = self.guide_image.to(dtype)
        if per_shape:
            g = nn.functional.interpolate(g, size=hw, mode="bilinear", align_corners=False)
        with torch.no_grad():
            feats = self.features(g)
        for term in self.objective.terms:
            term.set_guide(feats[term.layer])
        self._guide_shape = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, 3, H, W] -> [N]
        if self.needs_guide:
            self._refresh_guide((x.shape[-2], x.shape[-1]), x.dtype)
        return self.objective(self.features(x))


def objective_and_grad(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate ``fn(x) -> [N]`` and its gradient w.r.t. ``x[N,3,H,W]`` with autograd.

    Returns (objective[N], grad[N,3,H,W]) detached, in ``x``'s dtype.
    """
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        obj = fn(leaf)  # [N]
        (grad,) = torch.autograd.grad(obj.sum(), leaf)
    return obj.detach().to(x.dtype), grad.to(x.dtype)


__all__ = ["DreamObjective", "objective_and_grad"]
