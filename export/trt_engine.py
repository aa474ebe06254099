"""The TensorRT loader: engines built from the gradient ONNX file, cached on disk, checked on load (TensorRT 10, 11).

One engine per job image size (H, W), each with a single optimization profile: H and W exact,
N from 1 to the largest planned batch (opt = that batch). Engines are cached under
``$DREAMFLEET_CACHE/trt`` keyed by the ONNX file's sha256, that (H, W) and its largest N, the
precision, the TensorRT version and the GPU, so a job that adds a bucket builds only the new
size. All builds share a timing cache (``$DREAMFLEET_CACHE/trt/timing-<gpu>-<trt>.cache``) and a
workspace limit. Every ``add_optimization_profile`` / ``set_optimization_profile_async`` result
is checked, and a deserialized engine's I/O names, modes and dtypes are validated against the
graph's contract. The runner (``export.trt_backend``) only executes what this module loads,
as ``ort_session`` / ``ort_backend`` split ONNX Runtime (Polygraphy's loader / runner).

Precision guard: the network is created STRONGLY_TYPED on TensorRT 10 (with no flags on 11+, where it is
always strongly typed and the flag is deprecated), so
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

from .cache import cache_root
from .gpu_stack import STACKS
from .graph import INPUT_NAME, OUTPUT_NAMES

__all__ = ["TRT_PRECISIONS", "WORKSPACE_BYTES", "build_engine", "check_device", "check_io", "engine_cache_dir",
           "engine_cache_key", "import_trt", "load_engine", "network_flags", "profile_shapes", "timing_cache_path"]

log = logging.getLogger(__name__)

TRT_PRECISIONS = ("fp32", "fp16", "bf16")
WORKSPACE_BYTES = 4 << 30


INSTALL_HINT = (f"make setup-gpu (pip install '{STACKS['13'].trt}' for CUDA 13, driver r580+; make setup-gpu CUDA=12 "
                f"installs {STACKS['12'].trt} for older drivers)")


def import_trt():
    """tensorrt, or an ImportError that names what is missing and how to install it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ImportError(f"the tensorrt backend needs TensorRT 10 or 11 and a CUDA GPU: {INSTALL_HINT}, then run "
                          "with --device cuda; or use --backend onnxruntime") from exc
    if int(tensorrt.__version__.split(".")[0]) < 10:
        raise ImportError(f"the tensorrt backend needs TensorRT >= 10, found {tensorrt.__version__}: {INSTALL_HINT}")
    return tensorrt


def network_flags(trt) -> int:
    """``create_network`` flags: STRONGLY_TYPED on TensorRT 10; none on 11+, where networks are always strongly
    typed and the flag is deprecated and ignored."""
    if int(str(trt.__version__).split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


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
    network = builder.create_network(network_flags(trt))
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


def load_engine(runtime, trt, onnx_path: Path, precision: str, n_max: int, h: int, w: int, stream) -> tuple:
    """(engine, execution context) for N <= n_max at h x w: the cached engine, else built and cached.

    The context has profile 0 selected on ``stream`` (the caller synchronizes before the first step).
    Call under ``torch.cuda.device(...)``: TensorRT works on the current device.
    """
    gpu = torch.cuda.get_device_name(torch.cuda.current_device())
    key = engine_cache_key(file_sha256(onnx_path), [(n_max, h, w)], precision, trt.__version__, gpu)
    path = engine_cache_dir() / f"{onnx_path.stem}-{h}x{w}-{key}.engine"
    if path.is_file():
        blob = path.read_bytes()
        log.info("loaded cached TensorRT engine %s", path)
    else:
        blob = build_engine(onnx_path, [(n_max, h, w)], timing_cache=timing_cache_path(trt.__version__, gpu))
        atomic_write(path, blob)
        log.info("built TensorRT engine for N<=%d, %dx%d -> %s", n_max, h, w, path)
    engine = runtime.deserialize_cuda_engine(blob)
    if engine is None:
        raise RuntimeError(f"TensorRT could not deserialize {path}; delete it to rebuild")
    check_io(engine, trt)
    context = engine.create_execution_context()
    if context is None:
        raise RuntimeError(f"TensorRT could not create an execution context for {path} (device memory?)")
    if not context.set_optimization_profile_async(0, stream.cuda_stream):
        raise RuntimeError(f"TensorRT refused optimization profile 0 of {path}")
    return engine, context
