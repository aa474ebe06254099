"""torch eager backend: autograd through the truncated model, optional autocast and channels_last."""
from __future__ import annotations

import contextlib
import logging

import torch

from ..step import DreamObjective, objective_and_grad
from ..vocabulary import CPU_PRECISIONS, PRECISIONS
from .base import Backend

log = logging.getLogger(__name__)

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available else cpu; anything else as torch understands it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available; valid here: cpu, auto")
    return dev


def loop_dtype(precision: str) -> torch.dtype:
    """The dtype images live in during the loop (half precisions autocast inside the backend)."""
    return torch.float64 if precision == "fp64" else torch.float32


def check_precision(precision: str, device: torch.device) -> None:
    valid = PRECISIONS if device.type == "cuda" else CPU_PRECISIONS
    if precision not in valid:
        raise ValueError(f"precision {precision!r} is not supported on {device.type}; valid: {', '.join(valid)}")


class EagerBackend(Backend):
    name = "eager"

    def __init__(self, module: DreamObjective, device: torch.device, precision: str = "fp32",
                 channels_last: bool | None = None) -> None:
        super().__init__()
        check_precision(precision, device)
        self.device, self.precision = device, precision
        self.dtype = loop_dtype(precision)
        if channels_last is None:  # auto: a win for cuDNN; on CPU NCHW costs nothing and varies less with the batch
            channels_last = device.type == "cuda"
        self.channels_last = channels_last and precision != "fp64"
        module = module.to(device=device, dtype=self.dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module

    def _autocast(self):
        if self.precision in _AUTOCAST:
            return torch.autocast(self.device.type, dtype=_AUTOCAST[self.precision])
        return contextlib.nullcontext()

    def objective(self, x: torch.Tensor) -> torch.Tensor:
        """x[N,3,H,W] -> objective[N] (float32/float64)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.module(x)
        return out.to(self.dtype)

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return objective_and_grad(self.objective, x)

    def close(self) -> None:
        self.module = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> dict:
        return dict(super().describe(), precision=self.precision, channels_last=self.channels_last)
