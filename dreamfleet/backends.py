"""The backend factory: a name on the command line -> a ``Backend`` for a dream model.

Lives outside ``engine/`` because two backends come from ``export/`` (ONNX Runtime,
TensorRT); their modules are imported only when chosen.
"""
from __future__ import annotations

import torch

from dreamfleet.engine.backends.base import Backend
from dreamfleet.engine.build import DreamModel
from dreamfleet.engine.config import DreamConfig

BACKENDS = ("eager", "compile", "onnxruntime", "tensorrt")


def create_backend(dm: DreamModel, cfg: DreamConfig, device: torch.device) -> Backend:
    """Backend named by ``cfg.backend`` for ``dm`` on ``device``."""
    name = cfg.backend
    if name == "eager":
        from dreamfleet.engine.backends.eager import EagerBackend

        return EagerBackend(dm.module, device, cfg.precision, cfg.channels_last)
    if name == "compile":
        from dreamfleet.engine.backends.compiled import CompiledBackend

        return CompiledBackend(dm.module, device, cfg.precision, cfg.channels_last, cfg.compile_mode)
    if name == "onnxruntime":
        from dreamfleet.export.ort_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend.from_config(dm, cfg, device)
    if name == "tensorrt":
        from dreamfleet.export.trt_backend import TensorRTBackend

        return TensorRTBackend.from_config(dm, cfg, device)
    raise ValueError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
