"""TensorRT backend: one engine per job image size built from the gradient ONNX file (TensorRT 10 Python API).

``prepare(shapes)`` builds (or loads from the disk cache) one engine per (H, W) the job runs,
each with a single optimization profile: H and W exact, N from 1 to the largest planned batch
(opt = that batch). Engines are cached under ``$DREAMFLEET_CACHE/trt`` keyed by the ONNX file's
sha256, that (H, W) and its largest N, the precision, the TensorRT version and the GPU, so a job
that adds a bucket builds only the new size. All builds share a timing cache
(``$DREAMFLEET_CACHE/trt/timing-<gpu>-<trt>.cache``) and a workspace limit.

Each engine has its own execution context (one context per profile: nothing switches profiles
between octaves). ``step`` runs ``execute_async_v3`` on the backend's own CUDA stream (on the
legacy default stream TensorRT adds device syncs), ordered after torch's current stream and
joined back into it, so the loop needs no host sync. Every ``set_input_shape`` /
``set_tensor_address`` / ``set_optimization_profile_async`` / ``add_optimization_profile`` result is
checked; all work runs under ``torch.cuda.device(device)`` (TensorRT uses the current device); a
deserialized engine's I/O names, modes and dtypes are validated against the graph's contract.

Precision guard: the network is created STRONGLY_TYPED (ignored and always on in TensorRT 11), so
TensorRT keeps every tensor in the type the ONNX file gives it. fp16/bf16 use a graph exported in
that precision (features in half, objective and I/O in fp32); TensorRT cannot run the max-pool
mask's ``Equal`` in one precision and the window max in another, which would silently zero the
gradient.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from dreamfleet.engine.atomic import atomic_write, file_digest
from dreamfleet.engine.backends.base import Backend

from .cache import cache_root
from .graph import INPUT_NAME, OUTPUT_NAMES
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
    return cache_root() / "trt"


def timing_cache_path(trt_version: str, gpu: str) -> Path:
    safe = "".join(c if c.isalnum() else "-" for c in gpu)
    return engine_cache_dir() / f"timing-{safe}-{trt_version}.cache"


def build_engine(onnx_path: str | Path, shapes: list[tuple[int, int, int]], workspace: int = WORKSPACE_BYTES,
                 timing_cache: Path | None = None) -> bytes:
    """Parse the ONNX file into a strongly typed network; build a serialized engine, one profile per (H, W).

    ``timing_cache``: a file read before and written after the build (tactic timings carry over).
    """
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
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            log.warning("TensorRT refused the timing cache %s; building without it", timing_cache)
            cache = None
    for mn, opt, mx in profile_shapes(shapes):
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, mn, opt, mx)
        if config.add_optimization_profile(profile) < 0:
            raise RuntimeError(f"TensorRT rejected the optimization profile {mn} / {opt} / {mx} for {onnx_path}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    if cache is not None:
        atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def check_io(engine, trt) -> None:
    """A deserialized engine must have exactly the graph's I/O: fp32 input x and outputs objective, grad."""
    expected = {INPUT_NAME: trt.TensorIOMode.INPUT, **{n: trt.TensorIOMode.OUTPUT for n in OUTPUT_NAMES}}
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    if sorted(names) != sorted(expected):
        raise RuntimeError(f"TensorRT engine I/O {names} does not match the gradient graph's {sorted(expected)}; "
                           "delete the cached engine to rebuild")
    for name, mode in expected.items():
        if engine.get_tensor_mode(name) != mode or engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
            raise RuntimeError(f"TensorRT engine tensor {name!r} is {engine.get_tensor_mode(name)} "
                               f"{engine.get_tensor_dtype(name)}, expected {mode} FLOAT; delete the cached engine")


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
        trt = self.trt
        with torch.cuda.device(self.device):
            gpu = torch.cuda.get_device_name(self.device)
            onnx_sha = file_sha256(self.onnx_path)
            timing = timing_cache_path(trt.__version__, gpu)
            if self.runtime is None:
                self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
                self.stream = torch.cuda.Stream(self.device)  # non-default: no implicit device syncs
            for _, _, mx in profile_shapes(shapes):
                (n_max, _, h, w) = mx
                if self.profiles.get((h, w), (None, 0))[1] >= n_max:
                    continue  # already loaded for this size
                key = engine_cache_key(onnx_sha, [(n_max, h, w)], self.precision, trt.__version__, gpu)
                path = engine_cache_dir() / f"{self.onnx_path.stem}-{h}x{w}-{key}.engine"
                if path.is_file():
                    blob = path.read_bytes()
                    log.info("loaded cached TensorRT engine %s", path)
                else:
                    blob = build_engine(self.onnx_path, [(n_max, h, w)], timing_cache=timing)
                    atomic_write(path, blob)
                    log.info("built TensorRT engine for N<=%d, %dx%d -> %s", n_max, h, w, path)
                engine = self.runtime.deserialize_cuda_engine(blob)
                if engine is None:
                    raise RuntimeError(f"TensorRT could not deserialize {path}; delete it to rebuild")
                check_io(engine, trt)
                context = engine.create_execution_context()
                if context is None:
                    raise RuntimeError(f"TensorRT could not create an execution context for {path} (device memory?)")
                if not context.set_optimization_profile_async(0, self.stream.cuda_stream):
                    raise RuntimeError(f"TensorRT refused optimization profile 0 of {path}")
                self.engines[(h, w)] = (engine, context)
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
