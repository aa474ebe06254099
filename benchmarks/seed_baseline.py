"""The seed article's DeepDream, written as the article wrote it: the baseline dreamfleet is measured against.

Faithful, not a strawman. What the article does, and so what this does:

- the whole torchvision VGG16 is built (classifier included) and its parameters are left
  trainable, so ``loss.backward()`` also computes weight gradients, as in the article;
- the forward pass walks ``list(model.features.modules())`` and stops at the dream layer
  (``modules[j + 1]`` for ``j in range(layer + 1)``: index 0 is the Sequential itself);
- one image at a time, fp32, NCHW, eager autograd; objective = L2 norm of the activations;
- step ``x += lr * g / g.norm()`` with the norm over the whole gradient tensor, then
  ``x.clamp_(-3, 3)`` in normalized units;
- octaves: the image shrunk ``num_octaves - 1`` times by ``1 / octave_scale`` with nearest
  ``interpolate``, dreamed smallest first, the detail carried up by nearest ``interpolate``.

Images come in as pixels [N,3,H,W] in [0,1] (resized to 224 x 224 by the caller in the
article's setting) and go out the same way. With the same weights it computes what
``dreamfleet dream --preset seed --backend eager --precision fp32`` computes.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
import torchvision

log = logging.getLogger(__name__)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def load_vgg16(random_weights: bool = False) -> torch.nn.Module:
    """The article's model: ``models.vgg16(pretrained=True)``; random init is seeded like dreamfleet's."""
    if random_weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return torchvision.models.vgg16(weights=None).eval()
    return torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1).eval()


class SeedDream:
    """``dream(pixels)``: the article's algorithm on one image at a time."""

    def __init__(self, model: torch.nn.Module, layer: int = 30, iterations: int = 20, lr: float = 0.1,
                 octave_scale: float = 1.4, num_octaves: int = 3, device: str | torch.device = "cpu") -> None:
        n_features = len(model.features)
        if not 0 <= layer < n_features:
            raise ValueError(f"layer must index model.features; valid: 0..{n_features - 1}, got {layer}")
        if num_octaves < 1 or iterations < 1 or octave_scale <= 1.0:
            raise ValueError("num_octaves and iterations must be >= 1 and octave_scale > 1")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.modules = list(self.model.features.modules())  # [Sequential, conv, relu, ...]
        self.layer, self.iterations, self.lr = layer, iterations, lr
        self.octave_scale, self.num_octaves = octave_scale, num_octaves
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)

    def forward_to_layer(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for j in range(self.layer + 1):
            out = self.modules[j + 1](out)
        return out

    def dream_step(self, image: torch.Tensor) -> torch.Tensor:
        """``iterations`` ascent steps on one normalized image [1,3,h,w]."""
        x = image.clone().requires_grad_(True)
        for _ in range(self.iterations):
            self.model.zero_grad()
            out = self.forward_to_layer(x)
            loss = out.norm()
            loss.backward()
            g = x.grad.data
            x.data += self.lr * g / g.norm()
            x.grad.data.zero_()
            x.data.clamp_(-3, 3)
        return x.detach()

    def dream_one(self, image: torch.Tensor) -> torch.Tensor:
        """One normalized image [1,3,H,W] through the octave pyramid."""
        octaves = [image]
        for _ in range(self.num_octaves - 1):
            octaves.append(F.interpolate(octaves[-1], scale_factor=1 / self.octave_scale, mode="nearest"))
        detail = torch.zeros_like(octaves[-1])
        dreamed = image
        for i, octave_base in enumerate(octaves[::-1]):
            if i > 0:
                detail = F.interpolate(detail, size=octave_base.shape[-2:], mode="nearest")
            dreamed = self.dream_step(octave_base + detail)
            detail = dreamed - octave_base
        return dreamed

    def dream(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels[N,3,H,W] in [0,1] -> dreamed pixels, one image after the other."""
        outs = []
        for img in pixels:
            x = (img[None].to(self.device) - self.mean) / self.std
            outs.append((self.dream_one(x) * self.std + self.mean).clamp(0, 1))
        return torch.cat(outs)
