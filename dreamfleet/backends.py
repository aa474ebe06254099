"""The backend table: a name on the command line -> a factory making a ``Backend`` for a dream model.

Lives outside ``engine/`` because two backends come from ``export/`` (ONNX Runtime,
TensorRT); their modules are imported only when chosen. Each entry also checks the files
its backend is given (``--onnx``) before any output state is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dreamfleet.engine.backends.base import Backend
from dreamfleet.engine.build import DreamModel
from dreamfleet.engine.config import DreamConfig
from dreamfleet.engine.preflight import BadOptionFile, check_job_options, existing_file, first_line
from dreamfleet.engine.vocabulary import BACKENDS

Factory = Callable[[DreamModel, DreamConfig, torch.device], Backend]


def _eager(dm: DreamModel, cfg: DreamConfig, device: torch.device) -> Backend:
    from dreamfleet.engine.backends.eager import EagerBackend

    return EagerBackend(dm.module, device, cfg.precision, cfg.channels_last)


def _compile(dm: DreamModel, cfg: DreamConfig, device: torch.device) -> Backend:
    from dreamfleet.engine.backends.compiled import CompiledBackend

    return CompiledBackend(dm.module, device, cfg.precision, cfg.channels_last, cfg.compile_mode)


def _onnxruntime(dm: DreamModel, cfg: DreamConfig, device: torch.device) -> Backend:
    from dreamfleet.export.ort_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend.from_config(dm, cfg, device)


def _tensorrt(dm: DreamModel, cfg: DreamConfig, device: torch.device) -> Backend:
    from dreamfleet.export.trt_backend import TensorRTBackend

    return TensorRTBackend.from_config(dm, cfg, device)


def check_onnx_file(cfg: DreamConfig) -> None:
    """``--onnx``: an existing file that parses as an ONNX model (the graph's metadata is checked later)."""
    if not cfg.onnx:
        return
    path = existing_file("--onnx", cfg.onnx)
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise BadOptionFile(f"--onnx {path}: not an ONNX model ({first_line(exc)})") from None
    if not proto.graph.node:
        raise BadOptionFile(f"--onnx {path}: not an ONNX model (empty graph)")


@dataclass(frozen=True)
class BackendEntry:
    factory: Factory
    check: Callable[[DreamConfig], None] = lambda cfg: None


BACKEND_TABLE: dict[str, BackendEntry] = {
    "eager": BackendEntry(_eager),
    "compile": BackendEntry(_compile),
    "onnxruntime": BackendEntry(_onnxruntime, check_onnx_file),
    "tensorrt": BackendEntry(_tensorrt, check_onnx_file),
}
assert tuple(BACKEND_TABLE) == BACKENDS


def _entry(name: str) -> BackendEntry:
    try:
        return BACKEND_TABLE[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}") from None


def create_backend(dm: DreamModel, cfg: DreamConfig, device: torch.device) -> Backend:
    """Backend named by ``cfg.backend`` for ``dm`` on ``device``."""
    return _entry(cfg.backend).factory(dm, cfg, device)


def preflight(cfg: DreamConfig) -> None:
    """Check every file and index the job names (weights, guide, channels, the backend's files)."""
    _entry(cfg.backend).check(cfg)
    check_job_options(cfg)


__all__ = ["BACKENDS", "BACKEND_TABLE", "BackendEntry", "check_onnx_file", "create_backend", "preflight"]
