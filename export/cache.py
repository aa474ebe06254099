"""Where export artifacts are cached: ``$DREAMFLEET_CACHE`` (default ``~/.cache/dreamfleet``).

``onnx/`` holds exported gradient graphs, ``trt/`` TensorRT engines and timing caches,
``ort-trt/`` ONNX Runtime's TensorRT provider caches.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$DREAMFLEET_CACHE`` or ``~/.cache/dreamfleet``."""
    return Path(os.environ.get("DREAMFLEET_CACHE") or Path.home() / ".cache" / "dreamfleet")


def cache_dir() -> Path:
    """Exported gradient graphs: ``<cache root>/onnx``."""
    return cache_root() / "onnx"


__all__ = ["cache_dir", "cache_root"]
