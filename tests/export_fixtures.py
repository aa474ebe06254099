"""Shared, session-cached exports for the export / onnxruntime / tensorrt tests (a helpers module, no tests).

Exports cost 10-30 s each on 2 cores, so every (model, layers, objective) is exported once
per session into one temporary directory, stashed on the pytest config.
"""
from __future__ import annotations

import pytest

from dreamfleet.engine.build import build_dream_model
from dreamfleet.export.onnx_export import export_gradient_onnx

_KEY = pytest.StashKey[dict]()

# (model, layers, objective, channels) -> parity batch (N, H, W): odd sizes, unlike the trace's 83x91
CASES = {
    ("bvlc_googlenet", None, "l2", ()): (2, 67, 75),
    ("googlenet", None, "l2", ()): (2, 67, 75),
    ("vgg16", None, "l2", ()): (2, 67, 75),
    ("vgg19", None, "l2", ()): (2, 67, 75),
    ("inception_v3", None, "l2", ()): (2, 79, 87),
    ("resnet50", None, "l2", ()): (2, 67, 75),
    ("vgg16", "features.3:1.0,features.8:0.5", "channel", (3, 7)): (3, 65, 70),
}


def exported(config: pytest.Config, tmp_factory, model: str, layers=None, objective: str = "l2",
             channels: tuple = (), precision: str = "fp32"):
    """(dream model, ONNX path) for this case, exported once per test session."""
    cache = config.stash.setdefault(_KEY, {})
    key = (model, layers, objective, tuple(channels), precision)
    if key not in cache:
        dm = build_dream_model(model, layers, objective, tuple(channels), random_weights=model != "bvlc_googlenet")
        path = tmp_factory.mktemp("onnx") / f"{model}-{objective}-{precision}.onnx"
        export_gradient_onnx(dm, path, precision=precision, check=False)
        cache[key] = (dm, path)
    return cache[key]
