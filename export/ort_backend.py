"""ONNX Runtime backend: runs the exported gradient graph with the CPU, CUDA or TensorRT provider.

``step(x[N,3,H,W]) -> (objective[N], grad[N,3,H,W])`` like every backend. On CPU the batch
goes through numpy; on CUDA the session runs with I/O binding straight on torch's device
buffers (inputs and outputs never round-trip through host memory). The TensorRT execution
provider is put first when ONNX Runtime has it and ``use_trt_provider`` is set. The file's
metadata must match the job (:func:`export.onnx_export.check_metadata`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from dreamfleet.engine.backends.base import Backend

from .graph import INPUT_NAME, OUTPUT_NAMES
from .onnx_export import cached_export, check_metadata, expected_metadata, read_metadata

log = logging.getLogger(__name__)

ORT_PRECISIONS = {"cpu": ("fp32",), "cuda": ("fp32", "fp16")}


def import_ort():
    """onnxruntime, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError("the onnxruntime backend needs ONNX Runtime: pip install onnxruntime "
                          "(CPU) or onnxruntime-gpu (CUDA provider)") from exc
    return onnxruntime


def providers_for(device: str, use_trt_provider: bool = False) -> list:
    """Execution providers for ``device`` ('cpu' or 'cuda[:i]'); raises naming what is missing."""
    ort = import_ort()
    available = ort.get_available_providers()
    dev = torch.device(device)
    if dev.type == "cpu":
        return ["CPUExecutionProvider"]
    if dev.type != "cuda":
        raise ValueError(f"onnxruntime backend runs on cpu or cuda, not {device!r}; valid: cpu, cuda")
    if "CUDAExecutionProvider" not in available:
        raise RuntimeError(f"ONNX Runtime has no CUDA execution provider here (available: {', '.join(available)}); "
                           f"install onnxruntime-gpu (pip install onnxruntime-gpu) with a matching CUDA, or use --device cpu")
    opts = {"device_id": dev.index or 0}
    providers: list = [("CUDAExecutionProvider", opts), "CPUExecutionProvider"]
    if use_trt_provider:
        if "TensorrtExecutionProvider" not in available:
            raise RuntimeError("ONNX Runtime has no TensorRT execution provider here; install TensorRT 10 "
                               "(pip install tensorrt) and an onnxruntime-gpu build with TensorRT support")
        providers.insert(0, ("TensorrtExecutionProvider", dict(opts, trt_engine_cache_enable=True)))
    return providers


def make_session(path: str | Path, device: str = "cpu", use_trt_provider: bool = False, threads: int = 0):
    """An InferenceSession for the gradient graph on ``device``."""
    ort = import_ort()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=so, providers=providers_for(device, use_trt_provider))


class OnnxRuntimeBackend(Backend):
    """Gradient steps through ONNX Runtime; inputs in fp32 (the graph's I/O type)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: torch.device, expected: dict[str, str] | None = None,
                 use_trt_provider: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX gradient graph not found: {self.path} (make one with dreamfleet export)")
        self.metadata = read_metadata(self.path)
        if expected is not None:
            check_metadata(self.metadata, expected, self.path)
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.session = make_session(self.path, str(self.device), use_trt_provider)
        self.providers = self.session.get_providers()
        log.info("onnxruntime session on %s with %s", self.device, self.providers)

    @classmethod
    def from_config(cls, dm, cfg, device: torch.device) -> "OnnxRuntimeBackend":
        """The backend factory's entry: ``cfg.onnx`` or an automatic (cached) export for this job."""
        device = torch.device(device)
        valid = ORT_PRECISIONS.get(device.type, ("fp32",))
        if cfg.precision not in valid:
            raise ValueError(f"precision {cfg.precision!r} is not supported by the onnxruntime backend on "
                             f"{device.type}; valid: {', '.join(valid)}")
        expected = expected_metadata(dm, cfg.precision)
        path = Path(cfg.onnx) if cfg.onnx else cached_export(dm, cfg.precision)
        use_trt = device.type == "cuda" and "TensorrtExecutionProvider" in import_ort().get_available_providers()
        return cls(path, device, expected, use_trt_provider=use_trt)

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [N,3,H,W] -> objective [N], grad [N,3,H,W] (x's dtype and device)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected x[N,3,H,W], got shape {tuple(x.shape)}")
        xin = x.detach().to(device=self.device, dtype=torch.float32).contiguous()
        if self.device.type == "cuda":
            obj, grad = self._step_bound(xin)
        else:
            obj_np, grad_np = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: xin.numpy()})
            obj, grad = torch.from_numpy(obj_np), torch.from_numpy(grad_np)
        return obj.to(x.dtype), grad.to(x.dtype)

    def _step_bound(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CUDA: bind torch's device buffers as the graph's input and outputs (no host copies)."""
        n, _, h, w = x.shape
        obj = torch.empty(n, device=self.device, dtype=torch.float32)  # [N]
        grad = torch.empty(n, 3, h, w, device=self.device, dtype=torch.float32)  # [N,3,H,W]
        binding = self.session.io_binding()
        dev_id = self.device.index or 0
        import numpy as np

        binding.bind_input(INPUT_NAME, "cuda", dev_id, np.float32, list(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT_NAMES[0], "cuda", dev_id, np.float32, list(obj.shape), obj.data_ptr())
        binding.bind_output(OUTPUT_NAMES[1], "cuda", dev_id, np.float32, list(grad.shape), grad.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # x is ready before ORT reads it
        self.session.run_with_iobinding(binding)
        return obj, grad

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict:
        return dict(super().describe(), onnx=str(self.path), providers=list(self.providers or []),
                    precision=self.metadata.get("precision", "?"))
