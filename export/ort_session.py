"""ONNX Runtime loaders: the execution providers, their explicit options, and the session.

A session that asked for CUDA or TensorRT and did not get it (ORT logs and falls back to CPU) is an error
(``MissingProvider``, exit 2), naming the libraries that did not load.

Polygraphy's split: this file *loads* (which providers, with which options, one
``InferenceSession``); ``export/ort_backend.py`` *runs* (prepare / step / close), and the
exporter's parity check opens its session here too, so neither imports the other.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from .cache import cache_root
from .gpu_stack import ORT_TRT_MAJOR, STACKS
from .graph import INPUT_NAME


def import_ort():
    """onnxruntime, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError("the onnxruntime backend needs ONNX Runtime: pip install 'dreamfleet[ort]' (CPU) or, "
                          "on a GPU machine, make setup-gpu (onnxruntime-gpu; never both)") from exc
    return onnxruntime


class MissingProvider(RuntimeError):
    """A session asked for CUDA or TensorRT and ONNX Runtime gave it less (its silent CPU fallback)."""


def _flag(on: bool) -> str:
    """TensorRT provider booleans: ORT's Python binding accepts only True/true/False/false."""
    return "True" if on else "False"


def cuda_provider_options(device_id: int, stream_ptr: int | None, cuda_graph: bool) -> dict[str, str]:
    """Explicit CUDAExecutionProvider options (ORT 1.31 names; its option parser reads booleans as 0/1).

    ``user_compute_stream`` alone: ORT sets ``has_user_compute_stream`` from it (non-zero pointer).
    """
    opts = {"device_id": str(device_id), "cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "1",
            "enable_cuda_graph": "1" if cuda_graph else "0", "arena_extend_strategy": "kSameAsRequested"}
    if stream_ptr:  # must be non-zero to count (0 is the legacy default stream)
        opts["user_compute_stream"] = str(stream_ptr)
    return opts


def trt_provider_options(device_id: int, stream_ptr: int | None,
                         shapes: list[tuple[int, int, int]] | None) -> dict[str, str]:
    """Explicit TensorrtExecutionProvider options, exactly as ORT 1.31's Python binding validates them.

    Names from its whitelist (an unknown name makes session creation throw, and ORT's wrapper then retries
    on CUDA+CPU without options); booleans as "True"/"False"; ``user_compute_stream`` (it implies
    ``has_user_compute_stream``, which is not an accepted key). ``trt_fp16_enable`` stays off: in ORT it
    turns TensorRT's strong typing off, so an fp16 graph's max-pool mask could compare mixed precisions and
    zero the gradient (see export/trt_engine.py); fp16 comes from the graph's own types instead.
    """
    cache = str(cache_root() / "ort-trt")
    opts = {"device_id": str(device_id), "trt_engine_cache_enable": _flag(True), "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": _flag(True), "trt_timing_cache_path": cache,
            "trt_max_workspace_size": str(4 << 30), "trt_fp16_enable": _flag(False)}
    if stream_ptr:
        opts["user_compute_stream"] = str(stream_ptr)
    if shapes:
        n = max(s[0] for s in shapes)
        hs, ws = [s[1] for s in shapes], [s[2] for s in shapes]
        opts.update(trt_profile_min_shapes=f"{INPUT_NAME}:1x3x{min(hs)}x{min(ws)}",
                    trt_profile_opt_shapes=f"{INPUT_NAME}:{n}x3x{max(hs)}x{max(ws)}",
                    trt_profile_max_shapes=f"{INPUT_NAME}:{n}x3x{max(hs)}x{max(ws)}")
    return opts


def ort_build_cuda(ort) -> str | None:
    """The CUDA version the installed onnxruntime was built for ('13.0'), None for a CPU build."""
    info = getattr(getattr(ort, "capi", None), "build_and_package_info", None)
    if info is None:
        try:
            info = importlib.import_module(f"{ort.__name__}.capi.build_and_package_info")
        except ImportError:
            return None
    return getattr(info, "cuda_version", None) or None


def installed_tensorrt() -> tuple[str, str] | None:
    """(version, pip package) of the TensorRT libraries pip installed (tensorrt-cuNN-libs / tensorrt), or None."""
    from importlib import metadata

    for name in ("tensorrt-cu13-libs", "tensorrt-cu12-libs", "tensorrt-cu13", "tensorrt-cu12", "tensorrt"):
        try:
            return metadata.version(name), name
        except metadata.PackageNotFoundError:
            continue
    return None


def ort_trt_refusal(trt: tuple[str, str] | None) -> str | None:
    """Why ORT's TensorRT provider cannot use the installed TensorRT (its libnvinfer major differs), or None."""
    if trt is None or int(trt[0].split(".")[0]) == ORT_TRT_MAJOR:
        return None
    return (f"--ort-trt: ONNX Runtime's TensorRT execution provider links libnvinfer.so.{ORT_TRT_MAJOR} (TensorRT "
            f"{ORT_TRT_MAJOR}), but TensorRT {trt[0]} ({trt[1]}) is installed; install the pinned stack "
            f"(make setup-gpu: {STACKS['13'].trt}), or drop --ort-trt (--backend tensorrt runs TensorRT {trt[0]})")


def missing_library(provider: str, ort) -> str:
    """What to install when ``provider`` did not load: the libraries of the CUDA major ORT was built for."""
    cuda = ort_build_cuda(ort)
    if cuda is None:
        return (f"onnxruntime {ort.__version__} is the CPU build (no CUDA or TensorRT provider library): pip uninstall "
                f"onnxruntime, then make setup-gpu")
    major = cuda.split(".")[0]
    stack = STACKS.get(major)
    if provider == "TensorrtExecutionProvider":
        spec = stack.trt if stack else f"TensorRT {ORT_TRT_MAJOR} for CUDA {major}"
        return (f"TensorRT {ORT_TRT_MAJOR} for CUDA {major} (libnvinfer.so.{ORT_TRT_MAJOR}) did not load or refused the "
                f"provider options: pip install '{spec}' (make setup-gpu)")
    driver = f", NVIDIA driver {stack.driver}" if stack else ""
    return (f"the CUDA {major} runtime (libcudart.so.{major}, libcublas.so.{major}) and cuDNN 9 (libcudnn.so.9) "
            f"that onnxruntime-gpu {ort.__version__} is built for (CUDA {cuda}{driver}) did not load: run make "
            f"setup-gpu (make setup-gpu CUDA=12 on older drivers)")


def require_providers(session, requested: list, ort) -> list[str]:
    """The session's providers; MissingProvider naming what is missing when it lacks one that was asked for."""
    got = list(session.get_providers())
    wanted = [p[0] if isinstance(p, tuple) else p for p in requested]
    missing = [p for p in wanted if p != "CPUExecutionProvider" and p not in got]
    if missing:
        raise MissingProvider(f"ONNX Runtime session asked for {', '.join(missing)} but runs on {', '.join(got)} "
                              f"(no silent CPU fallback): {missing_library(missing[0], ort)}")
    return got


def providers_for(device: str, use_trt_provider: bool = False, stream_ptr: int | None = None,
                  cuda_graph: bool = False, shapes: list[tuple[int, int, int]] | None = None) -> list:
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
                           f"run make setup-gpu (it swaps onnxruntime for pip install {STACKS['13'].ort}, CUDA 13; "
                           "docs/gpu-install.md), or use --device cpu")
    dev_id = dev.index or 0
    providers: list = [("CUDAExecutionProvider", cuda_provider_options(dev_id, stream_ptr, cuda_graph)),
                       "CPUExecutionProvider"]
    if use_trt_provider:
        if "TensorrtExecutionProvider" not in available:
            raise RuntimeError("ONNX Runtime has no TensorRT execution provider here; install onnxruntime-gpu and "
                               f"TensorRT {ORT_TRT_MAJOR} (make setup-gpu: {STACKS['13'].trt})")
        refusal = ort_trt_refusal(installed_tensorrt())
        if refusal:
            raise RuntimeError(refusal)
        providers.insert(0, ("TensorrtExecutionProvider", trt_provider_options(dev_id, stream_ptr, shapes)))
    return providers


def make_session(path: str | Path, device: str = "cpu", use_trt_provider: bool = False, threads: int = 0, **provider_kw):
    """An InferenceSession for the gradient graph on ``device`` (``provider_kw``: see :func:`providers_for`)."""
    ort = import_ort()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    providers = providers_for(device, use_trt_provider, **provider_kw)
    session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    require_providers(session, providers, ort)  # ORT falls back to CPU silently when CUDA/TensorRT fail to load
    require_stream(session, providers, provider_kw.get("stream_ptr"))
    return session


def require_stream(session, requested: list, stream_ptr: int | None) -> None:
    """Each GPU provider runs on the stream it was given: the backend joins that stream instead of syncing,
    so a provider on ORT's own stream would let torch read outputs before they are written."""
    if not stream_ptr:
        return
    options = session.get_provider_options()
    for name in [p[0] for p in requested if isinstance(p, tuple) and "user_compute_stream" in p[1]]:
        got = options.get(name, {}).get("user_compute_stream")
        if got != str(stream_ptr):
            raise MissingProvider(f"ONNX Runtime's {name} ignored user_compute_stream={stream_ptr} (it runs on "
                                  f"{got or 'its own stream'}); outputs would race with torch's stream")


__all__ = ["MissingProvider", "cuda_provider_options", "import_ort", "installed_tensorrt", "make_session", "missing_library",
           "ort_build_cuda", "ort_trt_refusal", "providers_for", "require_providers", "require_stream", "trt_provider_options"]
