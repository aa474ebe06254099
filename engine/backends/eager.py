"""torch eager backend: autograd through the truncated model, weights cast once, optional channels_last.

Precision: fp32 and fp64 run as given; bf16/fp16 run the network natively in the half dtype with
its weights cast once at construction (:mod:`engine.backends.precision`), the objective reduction
and the loop's update in fp32. ``auto`` resolves per device (bf16 where native, else fp32).
On CUDA, ``cudnn.benchmark`` is switched on: a job's shapes repeat, so the per-shape algorithm
search pays for itself after the first step of each shape.
"""
from __future__ import annotations

import logging

import torch

from ..step import DreamObjective, objective_and_grad
from ..vocabulary import CPU_PRECISIONS, PRECISIONS
from .base import Backend
from .precision import cast_features, resolve_precision

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available else cpu; anything else as torch understands it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available; valid here: cpu, auto")
    return dev


def loop_dtype(precision: str) -> torch.dtype:
    """The dtype images live in during the loop (half precisions run inside the backend only)."""
    return torch.float64 if precision == "fp64" else torch.float32


def check_precision(precision: str, device: torch.device) -> None:
    valid = tuple(p for p in PRECISIONS if p != "auto") if device.type == "cuda" else CPU_PRECISIONS
    if precision not in valid:
        raise ValueError(f"precision {precision!r} is not supported on {device.type}; "
                         f"valid: {', '.join(valid)}, auto")


class EagerBackend(Backend):
    name = "eager"

    def __init__(self, module: DreamObjective, device: torch.device, precision: str = "fp32",
                 channels_last: bool | None = None) -> None:
        super().__init__()
        precision = resolve_precision(precision, device)
        check_precision(precision, device)
        self.device, self.precision = device, precision
        self.dtype = loop_dtype(precision)
        if channels_last is None:  # auto: a win for cuDNN and for oneDNN's bf16 convolutions (1.2x at batch 8,
            # VGG16 256x192 on a Zen 4, docs/peer-comparison.md); CPU fp32 NCHW is as fast and varies less
            channels_last = device.type == "cuda" or precision == "bf16"
        self.channels_last = channels_last and precision != "fp64"
        module = module.to(device=device, dtype=self.dtype)
        module = cast_features(module, precision)  # half precisions: weights cast once, LRN in fp32
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # shapes repeat: per-shape algorithm search pays off

    def objective(self, x: torch.Tensor) -> torch.Tensor:
        """x[N,3,H,W] -> objective[N] (float32/float64)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.module(x).to(self.dtype)

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return objective_and_grad(self.objective, x)

    def close(self) -> None:
        self.module = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> dict:
        return dict(super().describe(), precision=self.precision, channels_last=self.channels_last)
