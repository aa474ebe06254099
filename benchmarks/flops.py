"""FLOPs of a dream job and the throughput bound they imply.

One ascent step is the truncated model's forward plus the gradient with respect to the
*input* (no weight gradients: the dream model is frozen). ``step_flops`` counts it with
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, 2 FLOPs per
multiply-add) on the meta device, so counting a 512 px VGG16 step costs no compute; it
falls back to a real CPU run where an op has no meta kernel. ``job_flops_per_image``
sums the octave pyramid and iterations; ``images_per_s_bound`` turns that into the
FLOP limit of a device.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch.utils.flop_counter import FlopCounterMode

from dreamfleet.engine.build import build_dream_model
from dreamfleet.engine.octaves import octave_sizes, usable_octaves

log = logging.getLogger(__name__)


def count_step(module: torch.nn.Module, n: int, h: int, w: int, device: str = "meta") -> int:
    """FLOPs of one forward + input-gradient of ``module`` on an [n,3,h,w] batch."""
    mod = copy.deepcopy(module).to(device)
    for p in mod.parameters():
        p.requires_grad_(False)  # input gradient only, like every backend
    x = torch.zeros(n, 3, h, w, device=device, requires_grad=True)
    counter = FlopCounterMode(display=False)
    with counter, torch.enable_grad():
        mod(x).sum().backward()  # (autograd.grad on a leaf trips FlopCounterMode's module hooks)
    return int(counter.get_total_flops())


def step_flops(module: torch.nn.Module, h: int, w: int) -> int:
    """FLOPs of one ascent step for one h x w image (weights do not change FLOPs)."""
    try:
        return count_step(module, 1, h, w, "meta")
    except (NotImplementedError, RuntimeError) as exc:
        log.info("meta FLOP count failed (%s); counting on CPU", exc)
        return count_step(module, 1, h, w, "cpu")


def job_flops_per_image(module: torch.nn.Module, h: int, w: int, octaves: int, scale: float, iterations: int,
                        min_size: int) -> int:
    """FLOPs one image costs in a job: every usable octave x iterations steps."""
    n_oct = usable_octaves(h, w, octaves, scale, min_size)
    return iterations * sum(step_flops(module, oh, ow) for oh, ow in octave_sizes(h, w, n_oct, scale))


def images_per_s_bound(flops_per_image: float, peak_tflops: float, fraction: float) -> float:
    """The images/s a device reaches at ``fraction`` of ``peak_tflops``."""
    if flops_per_image <= 0:
        raise ValueError(f"flops_per_image must be > 0, got {flops_per_image}")
    return fraction * peak_tflops * 1e12 / flops_per_image


def standard_job_flops() -> list[dict]:
    """FLOPs per image of the issue's standard job (3 octaves x 1.4 from 512 px, 10 iterations) per model."""
    from dreamfleet.engine.models import get_spec

    rows = []
    for model, layer, objective in (("vgg16", "features.30", "norm"), ("bvlc_googlenet", "inception4c", "l2")):
        dm = build_dream_model(model, layer, objective, random_weights=True)
        f = job_flops_per_image(dm.module, 512, 512, 3, 1.4, 10, get_spec(model).min_size)
        rows.append({"model": model, "layer": layer, "job": "3 octaves x 1.4 from 512x512, 10 iterations",
                     "flop_per_image": f, "tflop_per_image": round(f / 1e12, 4)})
    return rows


def standard_job_bounds(peaks: dict[str, float], fraction: float) -> list[dict]:
    """images/s bound of the standard job on each device of ``peaks`` (name -> TFLOP/s) at ``fraction``."""
    jobs = standard_job_flops()
    return [dict(j, device=name, peak_tflops=peak, fraction=fraction,
                 images_per_s_bound=round(images_per_s_bound(j["flop_per_image"], peak, fraction), 1))
            for name, peak in peaks.items() for j in jobs]
