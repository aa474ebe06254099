"""ONNX Runtime backend: runs the exported gradient graph with the CPU, CUDA or TensorRT provider.

``step(x[N,3,H,W]) -> (objective[N], grad[N,3,H,W])`` like every backend. On CPU the batch
goes through numpy. On CUDA (ONNX Runtime 1.18+ provider options, all given explicitly):

- the CUDA provider runs on torch's current stream (``user_compute_stream``), so its work is
  ordered with the loop's without host syncs; ``RunOptions`` entry
  ``disable_synchronize_execution_providers=1`` drops the end-of-Run sync (the runner syncs
  once per batch);
- one ``IOBinding`` per shape, made once, bound to static torch buffers; with
  ``enable_cuda_graph`` ONNX Runtime captures each shape into its own CUDA graph
  (``gpu_graph_id`` = 1, 2, ... per shape; 0 is reserved, -1 disables) and replays it;
- ``cudnn_conv_algo_search`` is HEURISTIC (the default EXHAUSTIVE re-benchmarks every new shape);
- the TensorRT execution provider only on request (``--ort-trt``), with a profile covering the
  job's shapes, engine and timing caches under ``$DREAMFLEET_CACHE/ort-trt`` (its default is the
  working directory).

The file's metadata must match the job (:func:`export.onnx_export.check_metadata`). Making the
session (providers and their options) is the loader's job, in ``export/ort_session.py``; this
file is the runner (prepare / step / close).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from dreamfleet.engine.backends.base import Backend

from .graph import INPUT_NAME, OUTPUT_NAMES
from .onnx_export import cached_export, check_metadata, expected_metadata, read_metadata
from .ort_session import (  # noqa: F401  (the loaders, re-exported for callers of this module)
    MissingProvider,
    cuda_provider_options,
    import_ort,
    make_session,
    providers_for,
    trt_provider_options,
)

log = logging.getLogger(__name__)

ORT_PRECISIONS = {"cpu": ("fp32",), "cuda": ("fp32", "fp16")}


class OnnxRuntimeBackend(Backend):
    """Gradient steps through ONNX Runtime; inputs in fp32 (the graph's I/O type).

    On CPU the session is made at once. On CUDA it is made at ``prepare(shapes)`` (or at the first
    step), when the shapes for CUDA graphs and the TensorRT profile are known.
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: torch.device, expected: dict[str, str] | None = None,
                 use_trt_provider: bool = False, cuda_graph: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX gradient graph not found: {self.path} (make one with dreamfleet export)")
        self.metadata = read_metadata(self.path)
        if expected is not None:
            check_metadata(self.metadata, expected, self.path)
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.use_trt_provider, self.cuda_graph = use_trt_provider, cuda_graph and not use_trt_provider
        self.session, self.providers = None, []
        self.stream = None
        self.bindings: dict[tuple[int, int, int], tuple] = {}  # (N, H, W) -> (IOBinding, x, obj, grad, RunOptions)
        if self.device.type == "cuda":
            providers_for(str(self.device), use_trt_provider)  # fail early, naming what is missing
        else:
            self._open(None)

    def _open(self, shapes: list[tuple[int, int, int]] | None) -> None:
        kw = {}
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                self.stream = torch.cuda.Stream(self.device)  # non-default: ORT ignores a null stream
            kw = dict(stream_ptr=self.stream.cuda_stream, cuda_graph=self.cuda_graph and bool(shapes), shapes=shapes)
        try:
            self.session = make_session(self.path, str(self.device), self.use_trt_provider, **kw)
        except MissingProvider:  # CUDA/TensorRT did not load: no retry, no CPU run
            raise
        except Exception as exc:  # CUDA graphs refuse graphs with CPU-placed nodes
            if not kw.get("cuda_graph"):
                raise
            log.warning("onnxruntime CUDA graph capture unavailable for %s (%s); running without", self.path, exc)
            self.cuda_graph = False
            self.session = make_session(self.path, str(self.device), self.use_trt_provider, **dict(kw, cuda_graph=False))
        self.providers = self.session.get_providers()
        log.info("onnxruntime session on %s with %s", self.device, self.providers)

    @classmethod
    def from_config(cls, dm, cfg, device: torch.device) -> "OnnxRuntimeBackend":
        """The backend factory's entry: ``cfg.onnx`` or an automatic (cached) export for this job."""
        device = torch.device(device)
        valid = ORT_PRECISIONS.get(device.type, ("fp32",))
        precision = "fp32" if cfg.precision == "auto" else cfg.precision  # the graph's I/O is fp32
        if precision not in valid:
            raise ValueError(f"precision {cfg.precision!r} is not supported by the onnxruntime backend on "
                             f"{device.type}; valid: {', '.join(valid)}, auto")
        expected = expected_metadata(dm, precision)
        path = Path(cfg.onnx) if cfg.onnx else cached_export(dm, precision)
        use_trt = device.type == "cuda" and bool(getattr(cfg, "ort_trt", False))  # only on request (--ort-trt)
        return cls(path, device, expected, use_trt_provider=use_trt)

    def prepare(self, shapes: list[tuple[int, int, int]]) -> None:
        if self.device.type != "cuda":
            return
        self._open(sorted({tuple(int(v) for v in s) for s in shapes}))
        for n, h, w in sorted({tuple(s) for s in shapes}):
            self.step(torch.zeros(n, 3, h, w, device=self.device))  # first Run of a graph id captures it
        torch.cuda.current_stream(self.device).synchronize()

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [N,3,H,W] -> objective [N], grad [N,3,H,W] (x's dtype and device)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected x[N,3,H,W], got shape {tuple(x.shape)}")
        if self.device.type == "cuda":
            obj, grad = self._step_bound(x)
        else:
            xin = x.detach().to(dtype=torch.float32).contiguous()
            obj_np, grad_np = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: xin.numpy()})
            obj, grad = torch.from_numpy(obj_np), torch.from_numpy(grad_np)
        return obj.to(x.dtype), grad.to(x.dtype)

    def _binding(self, n: int, h: int, w: int) -> tuple:
        """One IOBinding per shape, bound once to static torch buffers (CUDA graphs need fixed addresses)."""
        key = (n, h, w)
        if key not in self.bindings:
            import numpy as np

            ort, dev_id = import_ort(), self.device.index or 0
            x = torch.empty(n, 3, h, w, device=self.device)  # [N,3,H,W]
            obj = torch.empty(n, device=self.device)  # [N]
            grad = torch.empty(n, 3, h, w, device=self.device)  # [N,3,H,W]
            binding = self.session.io_binding()
            binding.bind_input(INPUT_NAME, "cuda", dev_id, np.float32, list(x.shape), x.data_ptr())
            binding.bind_output(OUTPUT_NAMES[0], "cuda", dev_id, np.float32, list(obj.shape), obj.data_ptr())
            binding.bind_output(OUTPUT_NAMES[1], "cuda", dev_id, np.float32, list(grad.shape), grad.data_ptr())
            run = ort.RunOptions()
            run.add_run_config_entry("disable_synchronize_execution_providers", "1")  # the runner syncs per batch
            if self.cuda_graph:
                run.add_run_config_entry("gpu_graph_id", str(len(self.bindings) + 1))  # 0 reserved, -1 disables
            self.bindings[key] = (binding, x, obj, grad, run)
        return self.bindings[key]

    def _step_bound(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CUDA: copy into the shape's static input, Run on the backend's stream, join it back; no host sync."""
        if self.session is None:
            self._open(None)
        n, _, h, w = x.shape
        binding, xs, obj, grad, run = self._binding(n, h, w)
        current = torch.cuda.current_stream(self.device)
        xs.copy_(x.detach())  # on the current stream
        self.stream.wait_stream(current)  # ORT's stream sees x
        self.session.run_with_iobinding(binding, run)
        current.wait_stream(self.stream)  # the loop sees obj, grad
        return obj, grad  # static buffers: valid until this shape's next step

    def close(self) -> None:
        self.session, self.bindings = None, {}

    def describe(self) -> dict:
        return dict(super().describe(), onnx=str(self.path), providers=list(self.providers or []),
                    precision=self.metadata.get("precision", "?"), cuda_graph=self.cuda_graph,
                    tensorrt_provider=self.use_trt_provider)
