"""ONNX Runtime loaders: the execution providers, their explicit options, and the session.

Polygraphy's split: this file *loads* (which providers, with which options, one
``InferenceSession``); ``export/ort_backend.py`` *runs* (prepare / step / close), and the
exporter's parity check opens its session here too, so neither imports the other.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .cache import cache_root
from .graph import INPUT_NAME


def import_ort():
    """onnxruntime, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError("the onnxruntime backend needs ONNX Runtime: pip install 'dreamfleet[ort]' (CPU) or, "
                          "on a GPU machine, make setup-gpu (onnxruntime-gpu; never both)") from exc
    return onnxruntime


def cuda_provider_options(device_id: int, stream_ptr: int | None, cuda_graph: bool) -> dict[str, str]:
    """Explicit CUDAExecutionProvider options (strings, as the Python API passes them)."""
    opts = {"device_id": str(device_id), "cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "1",
            "enable_cuda_graph": "1" if cuda_graph else "0", "arena_extend_strategy": "kSameAsRequested"}
    if stream_ptr:  # must be non-zero to count (0 is the legacy default stream)
        opts.update(has_user_compute_stream="1", user_compute_stream=str(stream_ptr))
    return opts


def trt_provider_options(device_id: int, stream_ptr: int | None, shapes: list[tuple[int, int, int]] | None,
                         fp16: bool) -> dict[str, str]:
    """Explicit TensorrtExecutionProvider options: caches in dreamfleet's cache, a profile spanning the job."""
    cache = str(cache_root() / "ort-trt")
    opts = {"device_id": str(device_id), "trt_engine_cache_enable": "1", "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "1", "trt_timing_cache_path": cache, "trt_max_workspace_size": str(4 << 30),
            "trt_fp16_enable": "1" if fp16 else "0"}
    if stream_ptr:
        opts.update(has_user_compute_stream="1", user_compute_stream=str(stream_ptr))
    if shapes:
        n = max(s[0] for s in shapes)
        hs, ws = [s[1] for s in shapes], [s[2] for s in shapes]
        opts.update(trt_profile_min_shapes=f"{INPUT_NAME}:1x3x{min(hs)}x{min(ws)}",
                    trt_profile_opt_shapes=f"{INPUT_NAME}:{n}x3x{max(hs)}x{max(ws)}",
                    trt_profile_max_shapes=f"{INPUT_NAME}:{n}x3x{max(hs)}x{max(ws)}")
    return opts


def providers_for(device: str, use_trt_provider: bool = False, stream_ptr: int | None = None,
                  cuda_graph: bool = False, shapes: list[tuple[int, int, int]] | None = None,
                  fp16: bool = False) -> list:
    """Execution providers for ``device`` ('cpu' or 'cuda[:i]'); raises naming what is missing."""
    ort = import_ort()
    available = ort.get_available_providers()
    dev = torch.device(device)
    if dev.type == "cpu":
        return ["CPUExecutionProvider"]
    if dev.type != "cuda":
        raise ValueError(f"onnxruntime backend runs on cpu or cuda, not {device!r}; valid: cpu, cuda")
    if hasattr(ort, "preload_dlls") and "CUDAExecutionProvider" in available:
        ort.preload_dlls()  # ORT >= 1.21: CUDA/cuDNN from torch where compatible, else the nvidia wheels
    if "CUDAExecutionProvider" not in available:
        raise RuntimeError(f"ONNX Runtime has no CUDA execution provider here (available: {', '.join(available)}); "
                           f"install onnxruntime-gpu (pip install onnxruntime-gpu) with a matching CUDA, or use --device cpu")
    dev_id = dev.index or 0
    providers: list = [("CUDAExecutionProvider", cuda_provider_options(dev_id, stream_ptr, cuda_graph)),
                       "CPUExecutionProvider"]
    if use_trt_provider:
        if "TensorrtExecutionProvider" not in available:
            raise RuntimeError("ONNX Runtime has no TensorRT execution provider here; install TensorRT 10 "
                               "(pip install tensorrt) and an onnxruntime-gpu build with TensorRT support")
        providers.insert(0, ("TensorrtExecutionProvider", trt_provider_options(dev_id, stream_ptr, shapes, fp16)))
    return providers


def make_session(path: str | Path, device: str = "cpu", use_trt_provider: bool = False, threads: int = 0, **provider_kw):
    """An InferenceSession for the gradient graph on ``device`` (``provider_kw``: see :func:`providers_for`)."""
    ort = import_ort()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    providers = providers_for(device, use_trt_provider, **provider_kw)
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)


__all__ = ["cuda_provider_options", "import_ort", "make_session", "providers_for", "trt_provider_options"]
