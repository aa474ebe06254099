"""TensorRT backend: the runner for the engines ``export.trt_engine`` loads (TensorRT 10 Python API).

``prepare(shapes)`` loads (or builds and caches) one engine per (H, W) the job runs, N from 1 to
the largest planned batch; a job that adds a bucket builds only the new size (``trt_engine``).

Each engine has its own execution context (one context per profile: nothing switches profiles
between octaves). ``step`` runs ``execute_async_v3`` on the backend's own CUDA stream (on the
legacy default stream TensorRT adds device syncs), ordered after torch's current stream and
joined back into it, so the loop needs no host sync. Every ``set_input_shape`` /
``set_tensor_address`` result is checked; all work runs under ``torch.cuda.device(device)``
(TensorRT uses the current device).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from dreamfleet.engine.backends.base import Backend

from .graph import INPUT_NAME, OUTPUT_NAMES
from .onnx_export import cached_export, check_metadata, expected_metadata, read_metadata
from .trt_engine import TRT_PRECISIONS, check_device, import_trt, load_engine, profile_shapes

log = logging.getLogger(__name__)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, onnx_path: str | Path, device: torch.device, precision: str = "fp32",
                 expected: dict[str, str] | None = None) -> None:
        super().__init__()
        if precision not in TRT_PRECISIONS:
            raise ValueError(f"precision {precision!r} is not supported by the tensorrt backend; "
                             f"valid: {', '.join(TRT_PRECISIONS)}")
        self.trt = import_trt()
        check_device(device)
        self.onnx_path, self.precision = Path(onnx_path), precision
        self.metadata = read_metadata(self.onnx_path)
        if expected is not None:
            check_metadata(self.metadata, expected, self.onnx_path)
        if self.metadata.get("precision") != precision:
            raise ValueError(f"{self.onnx_path} was exported for {self.metadata.get('precision')!r}, the job runs "
                             f"{precision!r}: export with --precision {precision} (strongly typed engines take "
                             f"their precision from the graph)")
        self.device, self.dtype = torch.device(device), torch.float32
        self.runtime = self.stream = None
        self.engines: dict[tuple[int, int], tuple] = {}  # (H, W) -> (engine, its execution context)
        self.profiles: dict[tuple[int, int], tuple[int, int]] = {}  # (H, W) -> (profile index, max N)

    @classmethod
    def from_config(cls, dm, cfg, device: torch.device) -> "TensorRTBackend":
        """The backend factory's entry: ``cfg.onnx`` or an automatic (cached) export in the job's precision."""
        precision = cfg.precision
        if precision not in TRT_PRECISIONS + ("auto",):
            raise ValueError(f"precision {precision!r} is not supported by the tensorrt backend; "
                             f"valid: {', '.join(TRT_PRECISIONS)}, auto")
        import_trt()
        check_device(torch.device(device))
        if precision == "auto":
            from dreamfleet.engine.backends.precision import resolve_precision

            precision = resolve_precision("auto", torch.device(device))
        expected = expected_metadata(dm, precision)
        path = Path(cfg.onnx) if cfg.onnx else cached_export(dm, precision)
        return cls(path, device, precision, expected)

    def prepare(self, shapes: list[tuple[int, int, int]]) -> None:
        """One engine (one profile, one context) per (H, W) of ``shapes``; cached engines are loaded."""
        with torch.cuda.device(self.device):
            if self.runtime is None:
                self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
                self.stream = torch.cuda.Stream(self.device)  # non-default: no implicit device syncs
            for _, _, mx in profile_shapes(shapes):
                (n_max, _, h, w) = mx
                if self.profiles.get((h, w), (None, 0))[1] >= n_max:
                    continue  # already loaded for this size
                self.engines[(h, w)] = load_engine(self.runtime, self.trt, self.onnx_path, self.precision, n_max, h, w,
                                                   self.stream)
                self.profiles[(h, w)] = (0, n_max)
            self.stream.synchronize()  # profile selection done before the first step

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [N,3,H,W] -> objective [N], grad [N,3,H,W]
        n, c, h, w = x.shape
        if not self.engines:
            raise RuntimeError("call prepare(shapes) before step(): the engines are built from the job's shapes")
        n_max = self.profiles.get((h, w), (None, 0))[1]
        if (h, w) not in self.engines or n > n_max:
            prepared = sorted((m, ph, pw) for (ph, pw), (_, m) in self.profiles.items())
            raise ValueError(f"shape {(n, h, w)} was not prepared; prepared (N<=max, H, W): {prepared}")
        _, context = self.engines[(h, w)]
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            xin = x.detach().to(device=self.device, dtype=torch.float32).contiguous()
            obj = torch.empty(n, device=self.device, dtype=torch.float32)  # [N]
            grad = torch.empty(n, 3, h, w, device=self.device, dtype=torch.float32)  # [N,3,H,W]
            if not context.set_input_shape(INPUT_NAME, (n, c, h, w)):
                raise RuntimeError(f"TensorRT refused input shape {(n, c, h, w)} for the {h}x{w} engine")
            for name, t in ((INPUT_NAME, xin), (OUTPUT_NAMES[0], obj), (OUTPUT_NAMES[1], grad)):
                if not context.set_tensor_address(name, t.data_ptr()):
                    raise RuntimeError(f"TensorRT refused the address of {name!r}")
            self.stream.wait_stream(current)  # x (and the buffers' allocation) are ready
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for shape {(n, c, h, w)}")
            for t in (xin, obj, grad):
                t.record_stream(self.stream)  # the caching allocator must not reuse them before TensorRT is done
            current.wait_stream(self.stream)  # the loop sees obj, grad
        return obj.to(x.dtype), grad.to(x.dtype)

    def close(self) -> None:
        self.engines, self.profiles = {}, {}

    def describe(self) -> dict:
        return dict(super().describe(), onnx=str(self.onnx_path), precision=self.precision,
                    tensorrt=getattr(self.trt, "__version__", "?"), profiles=len(self.profiles))
