"""TensorRT backend: an engine built from the gradient ONNX file, one optimization profile per job size.

``prepare(shapes)`` builds (or loads from the disk cache) one engine with one optimization
profile per (H, W) the job runs: H and W exact, N from 1 to the largest planned batch (opt =
that batch, so the common shape gets kernels tuned for it, and the smaller remainder batches
still run); ``step`` picks the profile for x's size and runs
``execute_async_v3`` on torch's current CUDA stream with torch-owned buffers.

Precision guard: the network is created STRONGLY_TYPED, so TensorRT keeps every tensor in
the type the ONNX file gives it. fp16/bf16 use a graph exported in that precision (features
in half, objective and I/O in fp32); TensorRT cannot run the max-pool mask's ``Equal`` in
one precision and the window max in another, which would silently zero the gradient.
Engines are cached under ``$DREAMFLEET_CACHE/trt`` keyed by the ONNX file's sha256, the
shapes, the precision, the TensorRT version and the GPU.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from dreamfleet.engine.atomic import atomic_write, file_digest
from dreamfleet.engine.backends.base import Backend

from .graph import INPUT_NAME, OUTPUT_NAMES
from .onnx_export import cache_dir as onnx_cache_dir
from .onnx_export import cached_export, check_metadata, expected_metadata, read_metadata

log = logging.getLogger(__name__)

TRT_PRECISIONS = ("fp32", "fp16", "bf16")
WORKSPACE_BYTES = 4 << 30


def import_trt():
    """tensorrt, or an ImportError that names what is missing and how to install it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ImportError("the tensorrt backend needs TensorRT 10 and a CUDA GPU: pip install tensorrt "
                          "(NVIDIA's wheels, CUDA 12), then run with --device cuda; or use --backend onnxruntime") from exc
    if int(tensorrt.__version__.split(".")[0]) < 10:
        raise ImportError(f"the tensorrt backend needs TensorRT >= 10, found {tensorrt.__version__}: pip install -U tensorrt")
    return tensorrt


def check_device(device: torch.device) -> None:
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(f"the tensorrt backend needs a CUDA GPU (device {str(device)!r} asked for, "
                           f"CUDA available: {torch.cuda.is_available()}); use --backend onnxruntime on CPU")


def profile_shapes(shapes: list[tuple[int, int, int]]) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """One (min, opt, max) profile per distinct image size (H, W) of the job, sorted.

    H and W are exact; N runs from 1 to the largest batch planned for that size (opt = that
    largest batch), because real batches also come smaller: a bucket's last batch, an image
    that failed to load, a failing batch split in halves, a cluster shard's remainder.
    """
    if not shapes:
        raise ValueError("tensorrt needs the job's shapes to build profiles; got none (prepare([(N, H, W), ...]))")
    largest: dict[tuple[int, int], int] = {}
    for shape in {tuple(int(v) for v in s) for s in shapes}:
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shapes are (N, H, W) with positive sizes, got {shape}")
        n, h, w = shape
        largest[(h, w)] = max(n, largest.get((h, w), 0))
    return [((1, 3, h, w), (n, 3, h, w), (n, 3, h, w)) for (h, w), n in sorted(largest.items())]


def file_sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")


def engine_cache_key(onnx_sha: str, shapes: list[tuple[int, int, int]], precision: str, trt_version: str,
                     gpu: str) -> str:
    """Stable key: same ONNX bytes, shapes (order-free), precision, TensorRT version and GPU -> same engine."""
    if precision not in TRT_PRECISIONS:
        raise ValueError(f"unknown tensorrt precision {precision!r}; valid: {', '.join(TRT_PRECISIONS)}")
    blob = {"onnx": onnx_sha, "shapes": sorted({tuple(s) for s in shapes}), "precision": precision,
            "tensorrt": trt_version, "gpu": gpu}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


def engine_cache_dir() -> Path:
    return onnx_cache_dir().parent / "trt"


def build_engine(onnx_path: str | Path, shapes: list[tuple[int, int, int]], workspace: int = WORKSPACE_BYTES) -> bytes:
    """Parse the ONNX file into a strongly typed network and build a serialized engine with one profile per shape."""
    trt = import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    for mn, opt, mx in profile_shapes(shapes):
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, mn, opt, mx)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    return bytes(serialized)


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
        self.engine = self.context = None
        self.profiles: dict[tuple[int, int], tuple[int, int]] = {}  # (H, W) -> (profile index, max N)
        self.current_profile: int | None = None

    @classmethod
    def from_config(cls, dm, cfg, device: torch.device) -> "TensorRTBackend":
        """The backend factory's entry: ``cfg.onnx`` or an automatic (cached) export in the job's precision."""
        if cfg.precision not in TRT_PRECISIONS:
            raise ValueError(f"precision {cfg.precision!r} is not supported by the tensorrt backend; "
                             f"valid: {', '.join(TRT_PRECISIONS)}")
        import_trt()
        check_device(torch.device(device))
        expected = expected_metadata(dm, cfg.precision)
        path = Path(cfg.onnx) if cfg.onnx else cached_export(dm, cfg.precision)
        return cls(path, device, cfg.precision, expected)

    def prepare(self, shapes: list[tuple[int, int, int]]) -> None:
        trt = self.trt
        profiles = profile_shapes(shapes)
        gpu = torch.cuda.get_device_name(self.device)
        key = engine_cache_key(file_sha256(self.onnx_path), shapes, self.precision, trt.__version__, gpu)
        path = engine_cache_dir() / f"{self.onnx_path.stem}-{key}.engine"
        if path.is_file():
            blob = path.read_bytes()
            log.info("loaded cached TensorRT engine %s", path)
        else:
            blob = build_engine(self.onnx_path, shapes)
            atomic_write(path, blob)
            log.info("built TensorRT engine with %d profiles -> %s", len(profiles), path)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path}; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        self.profiles = {(mx[2], mx[3]): (i, mx[0]) for i, (_, _, mx) in enumerate(profiles)}  # (H, W) -> (index, max N)
        self.current_profile = None

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [N,3,H,W] -> objective [N], grad [N,3,H,W]
        n, c, h, w = x.shape
        if self.context is None:
            raise RuntimeError("call prepare(shapes) before step(): the engine is built from the job's shapes")
        index, n_max = self.profiles.get((h, w), (None, 0))
        if index is None or n > n_max:
            prepared = sorted((m, ph, pw) for (ph, pw), (_, m) in self.profiles.items())
            raise ValueError(f"shape {(n, h, w)} was not prepared; prepared (N<=max, H, W): {prepared}")
        stream = torch.cuda.current_stream(self.device)
        if index != self.current_profile:
            self.context.set_optimization_profile_async(index, stream.cuda_stream)
            self.current_profile = index
        xin = x.detach().to(device=self.device, dtype=torch.float32).contiguous()
        obj = torch.empty(n, device=self.device, dtype=torch.float32)  # [N]
        grad = torch.empty(n, 3, h, w, device=self.device, dtype=torch.float32)  # [N,3,H,W]
        self.context.set_input_shape(INPUT_NAME, (n, c, h, w))
        self.context.set_tensor_address(INPUT_NAME, xin.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAMES[0], obj.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAMES[1], grad.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for shape {(n, c, h, w)}")
        return obj.to(x.dtype), grad.to(x.dtype)

    def close(self) -> None:
        self.context = self.engine = None

    def describe(self) -> dict:
        return dict(super().describe(), onnx=str(self.onnx_path), precision=self.precision,
                    tensorrt=getattr(self.trt, "__version__", "?"), profiles=len(self.profiles))
