"""Which cases a benchmark run measures: the ``quick`` (CPU default), ``full`` and ``smoke`` profiles.

``quick`` keeps CPU runs to a few minutes on 2 cores: small images (96-192 px) and 2
iterations per octave, labelled as such in every row. ``full`` is the standard job
(3 octaves x 1.4 from 512 px, 10 iterations) across batch sizes, backends and
precisions. ``smoke`` is the tiny matrix the test suite runs. Every profile begins with
the seed baseline and dreamfleet on the same job (the "seed" group) so the ratio is
measured in one run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from dreamfleet.engine.vocabulary import BACKENDS, CPU_PRECISIONS, PRECISIONS

from .harness import Case

log = logging.getLogger(__name__)

PROFILES = ("quick", "full", "smoke")
ALL_BACKENDS = BACKENDS


@dataclass(frozen=True)
class Profile:
    name: str
    label: str  # said in every row and above the table
    cases: tuple[Case, ...]
    repeats: int
    warmup: int
    default_backends: tuple[str, ...]


def precisions(device: torch.device) -> tuple[str, ...]:
    valid = PRECISIONS if device.type == "cuda" else CPU_PRECISIONS
    return tuple(p for p in valid if p != "fp64")  # fp64 is for tests, not throughput


def _matrix(vgg: Case, goog: Case, batches: tuple[int, ...], sizes: tuple[int, ...], device: torch.device,
            ref_batches: tuple[int, int]) -> list[Case]:
    """The seed pair, then batch, size, precision and backend sweeps around two reference jobs."""
    cases = [replace(vgg, group="seed", impl="seed", batch_size=1),
             replace(vgg, group="seed", batch_size=1), replace(vgg, group="seed", batch_size=ref_batches[0])]
    ref_v, ref_g = replace(vgg, batch_size=ref_batches[0]), replace(goog, batch_size=ref_batches[1])
    cases += [replace(goog, group="batch", batch_size=b) for b in batches]
    cases += [replace(ref_g, group="size", size=s) for s in sizes if s != goog.size]
    for prec in precisions(device)[1:]:
        cases += [replace(ref_v, group="precision", precision=prec), replace(ref_g, group="precision", precision=prec)]
    if device.type == "cpu" and torch.get_num_threads() > 1:  # many small ops: threads can cost more than they give
        cases += [replace(ref_v, group="threads", threads=1), replace(ref_g, group="threads", threads=1)]
    cases += [replace(ref_v, group="reproducible", reproducible=True),
              replace(ref_g, group="reproducible", reproducible=True)]
    for backend in ALL_BACKENDS[1:]:
        cases += [replace(ref_v, group="backend", backend=backend), replace(ref_g, group="backend", backend=backend)]
    return cases


def get_profile(name: str, device: torch.device) -> Profile:
    """The named profile for ``device`` (GPU runs use bigger batches)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    gpu = device.type == "cuda"
    if name == "smoke":
        vgg = Case("seed", "vgg16", size=64, octaves=2, iterations=1, images=2)
        cases = (replace(vgg, impl="seed"), replace(vgg, batch_size=2),
                 Case("batch", "bvlc_googlenet", layer="inception3b", size=64, octaves=2, iterations=1, images=2,
                      batch_size=2))
        return Profile(name, "smoke test: tiny images, 1 iteration; timings meaningless", cases, 1, 0, ("eager",))
    if name == "quick":
        vgg = Case("model", "vgg16", size=96, octaves=3, iterations=2, images=2)
        goog = Case("model", "bvlc_googlenet", size=128, octaves=3, iterations=2, images=4)
        batches, sizes, ref = ((1, 8, 32), (128, 256), (8, 32)) if gpu else ((1, 4), (96, 192), (2, 4))
        label = ("CPU quick profile: small images (96-192 px), 3 octaves x 1.4, 2 iterations per octave; "
                 "NOT the standard job") if not gpu else "GPU quick profile: 128-256 px, 2 iterations per octave"
        return Profile(name, label, tuple(_matrix(vgg, goog, batches, sizes, device, ref)), 5, 1,
                       ("eager", "onnxruntime", "tensorrt") if not gpu else ALL_BACKENDS)
    std = dict(size=512, octaves=3, octave_scale=1.4, iterations=10)
    vgg = Case("model", "vgg16", images=8 if gpu else 2, **std)
    goog = Case("model", "bvlc_googlenet", images=32 if gpu else 2, **std)
    batches, sizes, ref = ((1, 8, 32), (256, 512, 1024), (8, 32)) if gpu else ((1, 2), (256, 512), (2, 2))
    return Profile(name, "full profile: the standard job, 3 octaves x 1.4 from 512 px, 10 iterations",
                   tuple(_matrix(vgg, goog, batches, sizes, device, ref)), 5 if gpu else 2, 1 if gpu else 0,
                   ALL_BACKENDS)
