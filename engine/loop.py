"""The batched octave-ascent loop: the whole batch advances one step per forward/backward.

Per image: an octave pyramid (smallest first), detail carried from each octave to the
next, ``iterations`` steps per octave, random roll jitter undone after each step, the
gradient normalized per image, the result clamped. The backend only supplies gradients;
everything here is identical for every backend.
The step (``ascent``) and the octave loop (``dream_steps``) are generators that yield the batch
whose gradient they need: ``drive`` answers them with a backend, the tile scheduler
(``engine.tiled``) with gradients assembled from tiles, so both run this one loop.
"""
from __future__ import annotations

import logging
from typing import Generator

import torch

from .backends.base import Backend
from .config import DreamConfig
from .jitter import draw_shifts, image_rng, roll
from .models import ModelSpec
from .octaves import build_pyramid, resize_to, usable_octaves
from .space import ImageSpace

log = logging.getLogger(__name__)

# yields x[N,3,H,W] (a rolled batch), is sent its gradient [N,3,H,W], returns the new z
StepGen = Generator[torch.Tensor, torch.Tensor, torch.Tensor]


def ascent(z: torch.Tensor, rngs, cfg: DreamConfig, space: ImageSpace) -> StepGen:
    """The ascent step as a generator: yields the rolled batch, receives its gradient, returns the new z.

    z: [N,3,H,W] normalized -> [N,3,H,W]. ``ascent_step`` runs it with a backend; the tile
    scheduler (``engine.tiled``) answers with gradients assembled from tiles.
    """
    shifts = draw_shifts(rngs, cfg.jitter)
    grad = yield roll(z, shifts)  # grad: [N,3,H,W], in the rolled frame
    grad = roll(grad, shifts, sign=-1)
    return space.update(z, grad, cfg.step, cfg.grad_norm)


def drive(steps: StepGen, backend: Backend) -> torch.Tensor:
    """Run a step generator (``ascent``, ``dream_steps``) with ``backend`` computing every gradient."""
    try:
        x = next(steps)
        while True:
            x = steps.send(backend.step(x)[1])
    except StopIteration as done:
        return done.value


def ascent_step(backend: Backend, z: torch.Tensor, rngs, cfg: DreamConfig, space: ImageSpace) -> torch.Tensor:
    """One step for the whole batch. z: [N,3,H,W] normalized -> [N,3,H,W]."""
    return drive(ascent(z, rngs, cfg, space), backend)


def dream_normalized(backend: Backend, base: torch.Tensor, cfg: DreamConfig, spec: ModelSpec, keys: list[str],
                     space: ImageSpace | None = None) -> torch.Tensor:
    """base[N,3,H,W] in the model's normalized space -> dreamed [N,3,H,W], same space.

    ``keys`` name the images (relative paths): each seeds that image's jitter stream.
    """
    return drive(dream_steps(base, cfg, spec, keys, space), backend)


def dream_steps(base: torch.Tensor, cfg: DreamConfig, spec: ModelSpec, keys: list[str],
                space: ImageSpace | None = None) -> StepGen:
    """``dream_normalized`` as a generator: yields each rolled batch whose gradient it needs."""
    if len(keys) != base.shape[0]:
        raise ValueError(f"need one key per image: {len(keys)} keys for {base.shape[0]} images")
    space = space or ImageSpace.create(spec, cfg, base.device, base.dtype)
    h, w = base.shape[-2:]
    n_oct = usable_octaves(h, w, cfg.octaves, cfg.octave_scale, spec.min_size)
    if n_oct < cfg.octaves:
        log.info("%dx%d: %d of %d octaves fit the model's %d px minimum", w, h, n_oct, cfg.octaves, spec.min_size)
    rngs = [image_rng(cfg.seed, k) for k in keys]
    pyramid = build_pyramid(base, n_oct, cfg.octave_scale, cfg.interpolation)  # largest first
    del base  # memory: each level is dropped once used, and the last octave keeps no base or detail
    detail = torch.zeros_like(pyramid[-1])
    z = pyramid[-1]
    for level in range(n_oct):
        octave_base = pyramid.pop()  # smallest first
        if level > 0:
            detail = resize_to(detail, tuple(octave_base.shape[-2:]), cfg.interpolation)
        z = octave_base + detail  # [N,3,h,w]
        detail = None
        if level == n_oct - 1:
            octave_base = None  # the last octave's detail is never used
        for _ in range(cfg.iterations):
            z = yield from ascent(z, rngs, cfg, space)
        if octave_base is not None:
            detail = z - octave_base
    return z


def dream_tensor(backend: Backend, images: torch.Tensor, cfg: DreamConfig, spec: ModelSpec,
                 keys: list[str]) -> torch.Tensor:
    """images[N,3,H,W] pixels in [0,1] -> dreamed pixels [N,3,H,W] in [0,1]."""
    space = ImageSpace.create(spec, cfg, images.device, images.dtype)
    z = dream_normalized(backend, space.to_model(images), cfg, spec, keys, space)
    return space.to_pixels(z).clamp(0.0, 1.0)
