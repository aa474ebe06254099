"""The batched octave-ascent loop: the whole batch advances one step per forward/backward.

Per image: an octave pyramid (smallest first), detail carried from each octave to the
next, ``iterations`` steps per octave, random roll jitter undone after each step, the
gradient optionally smoothed (``engine/smoothing.py``) and normalized per image, the
result clamped. The backend only supplies gradients; everything here is identical for
every backend.

The step (``ascent``) and the octave loop (``dream_steps``) are generators that yield the batch
whose gradient they need: ``drive`` answers them with a backend, the tile scheduler
(``engine.tiled``) with gradients assembled from tiles, so both run this one loop.

The per-step work is flat: every shift of a dream is drawn and uploaded before the first
step (``JitterSchedule``), each roll is one gather for the whole batch, and nothing in the
step loop reads a device value on the host (no sync until the runner's fence).
"""
from __future__ import annotations

import logging
from typing import Generator

import torch

from .backends.base import Backend
from .config import DreamConfig
from .jitter import JitterSchedule, draw_shifts, image_rng, roll_batched, roll_indexed
from .models import ModelSpec
from .octaves import build_pyramid, resize_to, usable_octaves
from .reproducible import deterministic_torch, per_image
from .smoothing import smooth_gradient
from .space import ImageSpace

log = logging.getLogger(__name__)

# yields x[N,3,H,W] (a rolled batch), is sent its gradient [N,3,H,W], returns the new z
StepGen = Generator[torch.Tensor, torch.Tensor, torch.Tensor]


def _roll_pair(rngs, cfg: DreamConfig, z: torch.Tensor):
    """(roll, unroll) functions for this step, or None when no image moves."""
    if isinstance(rngs, JitterSchedule):
        h, w = z.shape[-2:]
        s = rngs.next_step(h, w)  # each flat index [N, H*W] is made when its roll runs
        return None if s is None else (lambda t: roll_indexed(t, rngs.index(s, h, w)),
                                       lambda t: roll_indexed(t, rngs.index(s, h, w, back=True)))
    shifts = draw_shifts(rngs, cfg.jitter)  # a list of per-image generators: draw one step now
    if all(s == (0, 0) for s in shifts):
        return None
    sh = torch.tensor(shifts, dtype=torch.int64, device=z.device)  # [N, 2]
    return lambda t: roll_batched(t, sh), lambda t: roll_batched(t, sh, sign=-1)


def ascent(z: torch.Tensor, rngs, cfg: DreamConfig, space: ImageSpace, it: int = 0) -> StepGen:
    """The ascent step as a generator: yields the rolled batch, receives its gradient, returns the new z.

    z: [N,3,H,W] normalized -> [N,3,H,W]. ``rngs``: the dream's ``JitterSchedule``, or one numpy
    generator per image (draws this step); ``it``: the iteration within the octave (drives the
    smoothing schedule). Rolls are gathers (per element, batch-independent); with ``reproducible``
    the update, which reduces within an image, runs on each image alone.
    """
    rolls = _roll_pair(rngs, cfg, z)
    grad = yield (z if rolls is None else rolls[0](z))  # grad: [N,3,H,W], in the rolled frame
    if rolls is not None:
        grad = rolls[1](grad)
    if cfg.reproducible:
        return per_image(lambda zi, gi: _update(zi, gi, cfg, space, it), z, grad)
    return _update(z, grad, cfg, space, it)


def _update(z: torch.Tensor, grad: torch.Tensor, cfg: DreamConfig, space: ImageSpace, it: int) -> torch.Tensor:
    """Smoothing (identity for smooth="none") and the per-image normalized update; [N,3,H,W]."""
    grad = smooth_gradient(grad, cfg.smooth, cfg.sigma_range(), cfg.lap_levels, it, cfg.iterations, space.unit)
    return space.update(z, grad, cfg.step, cfg.grad_norm)


def drive(steps: StepGen, backend: Backend, reproducible: bool = False) -> torch.Tensor:
    """Run a step generator (``ascent``, ``dream_steps``) with ``backend`` computing every gradient.

    ``reproducible``: each image's gradient on a batch-1 slice, torch's deterministic algorithms on
    (``engine/reproducible.py``), so an image's result does not depend on its batch.
    """
    if reproducible:
        def grad_of(x: torch.Tensor) -> torch.Tensor:
            return per_image(lambda xi: backend.step(xi)[1], x)
    else:
        def grad_of(x: torch.Tensor) -> torch.Tensor:
            return backend.step(x)[1]
    with deterministic_torch(reproducible):
        try:
            x = next(steps)
            while True:
                x = steps.send(grad_of(x))
        except StopIteration as done:
            return done.value


def ascent_step(backend: Backend, z: torch.Tensor, rngs, cfg: DreamConfig, space: ImageSpace,
                it: int = 0) -> torch.Tensor:
    """One step for the whole batch. z: [N,3,H,W] normalized -> [N,3,H,W]."""
    return drive(ascent(z, rngs, cfg, space, it), backend, cfg.reproducible)


def dream_normalized(backend: Backend, base: torch.Tensor, cfg: DreamConfig, spec: ModelSpec, keys: list[str],
                     space: ImageSpace | None = None) -> torch.Tensor:
    """base[N,3,H,W] in the model's normalized space -> dreamed [N,3,H,W], same space.

    ``keys`` name the images (relative paths): each seeds that image's jitter stream.
    """
    return drive(dream_steps(base, cfg, spec, keys, space), backend, cfg.reproducible)


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
    rngs = JitterSchedule([image_rng(cfg.seed, k) for k in keys], cfg.jitter, n_oct * cfg.iterations, base.device)
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
        for it in range(cfg.iterations):
            z = yield from ascent(z, rngs, cfg, space, it)
        if octave_base is not None:
            detail = z - octave_base
    return z


def dream_tensor(backend: Backend, images: torch.Tensor, cfg: DreamConfig, spec: ModelSpec,
                 keys: list[str], space: ImageSpace | None = None) -> torch.Tensor:
    """images[N,3,H,W] pixels in [0,1] -> dreamed pixels [N,3,H,W] in [0,1].

    ``space``: made once by a caller that dreams many batches (its creation copies to the device, blocking).
    """
    space = space or ImageSpace.create(spec, cfg, images.device, images.dtype)
    z = dream_normalized(backend, space.to_model(images), cfg, spec, keys, space)
    return space.to_pixels(z).clamp(0.0, 1.0)
