"""Reproducible mode: an image's dream does not depend on the batch it lands in.

fp32 kernels are chosen by shape (oneDNN, cuDNN, MLAS pick algorithms and blockings per
batch size), so the same image can round differently in a batch of 4 than alone, and over
many steps a rounding difference can cross a ReLU or max-pool switch point. In reproducible
mode (``--reproducible``) the loop evaluates every operation that mixes values *within* an
image -- the backend's forward/backward and the per-image gradient norm -- on a batch-1 slice
of its own, in a fresh allocation; everything done on the whole batch is elementwise or a
gather (normalization, roll jitter, octave resampling, clamp), whose per-element result does
not depend on the batch. Torch's deterministic algorithms are switched on for the duration.
So, on one machine with one software stack and thread count, an image's result is
bit-identical whatever its batch and its neighbours. It costs the speed of batching
(see the README's "Reproducibility").
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable

import torch


@contextlib.contextmanager
def deterministic_torch(enabled: bool = True):
    """Torch deterministic algorithms (and no cuDNN autotuning) inside the block; restored after."""
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    # cuBLAS needs a fixed workspace to be deterministic; read when its handle is created (first matmul)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: an op without a deterministic implementation warns instead of failing the job
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


def per_image(fn: Callable[..., torch.Tensor], *batches: torch.Tensor) -> torch.Tensor:
    """``fn`` applied to each image alone: batches [N,...] -> cat of fn(slices [1,...]) -> [N,...].

    Each slice is cloned so its kernels see a fresh allocation (the same alignment whatever its
    position in the batch). Runs for N == 1 too, so a batch of one takes exactly the same path.
    """
    n = batches[0].shape[0]
    return torch.cat([fn(*(b[i:i + 1].clone() for b in batches)) for i in range(n)])


__all__ = ["deterministic_torch", "per_image"]
