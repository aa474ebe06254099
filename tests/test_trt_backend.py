"""TensorRT backend: what runs without TensorRT (profiles, cache keys, clear failures) and, on a GPU, parity."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from dreamfleet.engine.build import build_dream_model
from dreamfleet.engine.config import make_config
from dreamfleet.engine.octaves import plan_shapes
from dreamfleet.export import trt_engine
from dreamfleet.export.trt_backend import TensorRTBackend
from dreamfleet.export.trt_engine import engine_cache_key, import_trt, profile_shapes

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def test_one_profile_per_job_size_batches_up_to_the_largest():
    shapes = plan_shapes([(64, 96), (64, 96), (64, 96), (80, 80)], batch_size=2, octaves=2, scale=1.4, min_size=32)
    profiles = profile_shapes(shapes + shapes[:1])  # duplicates collapse
    sizes = sorted({(h, w) for _, h, w in shapes})
    assert len(profiles) == len(sizes)
    for (h, w), (mn, opt, mx) in zip(sizes, profiles):
        n_max = max(n for n, sh, sw in shapes if (sh, sw) == (h, w))
        assert mn == (1, 3, h, w) and opt == mx == (n_max, 3, h, w)
    assert {p[2][0] for p in profiles} == {1, 2}  # 80x80 only ever runs N=1; 64x96 runs up to 2
    with pytest.raises(ValueError, match="got none"):
        profile_shapes([])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        profile_shapes([(2, 64)])


def test_engine_cache_key_covers_onnx_shapes_precision_version_gpu():
    base = dict(onnx_sha="ab" * 32, shapes=[(2, 64, 64), (2, 45, 45)], precision="fp16", trt_version="10.3.0",
                gpu="NVIDIA H100")
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**dict(base, shapes=[(2, 45, 45), (2, 64, 64)]))  # order-free
    for change in (dict(onnx_sha="cd" * 32), dict(shapes=[(2, 64, 64)]), dict(precision="fp32"),
                   dict(trt_version="10.4.0"), dict(gpu="NVIDIA A100")):
        assert engine_cache_key(**dict(base, **change)) != key, change
    with pytest.raises(ValueError, match="valid: fp32, fp16, bf16"):
        engine_cache_key(**dict(base, precision="fp64"))


def test_missing_tensorrt_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(ImportError, match=r"pip install .tensorrt-cu13>=10\.13\.2,<11. for CUDA 13, driver r580\+"):
        import_trt()
    dm = build_dream_model("vgg16", "features.3", random_weights=True)
    cfg = make_config(overrides=dict(model="vgg16", layer="features.3", backend="tensorrt", random_weights=True))
    with pytest.raises(ImportError, match="TensorRT 10"):
        TensorRTBackend.from_config(dm, cfg, torch.device("cpu"))
    with pytest.raises(ValueError, match="valid: fp32, fp16, bf16"):
        TensorRTBackend.from_config(dm, make_config(overrides=dict(precision="fp64")), torch.device("cpu"))


def test_needs_a_cuda_device():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        trt_engine.check_device(torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT 10 and CUDA")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_torch(precision, tmp_path, monkeypatch):
    from dreamfleet.engine.step import objective_and_grad
    from dreamfleet.export.onnx_export import compare

    monkeypatch.setenv("DREAMFLEET_CACHE", str(tmp_path))
    dm = build_dream_model("bvlc_googlenet", "inception3b")
    cfg = make_config(overrides=dict(model="bvlc_googlenet", layer="inception3b", backend="tensorrt",
                                     precision=precision, device="cuda"))
    be = TensorRTBackend.from_config(dm, cfg, torch.device("cuda"))
    be.prepare([(2, 64, 72), (2, 45, 51)])
    for h, w in ((64, 72), (45, 51)):
        x = torch.randn(2, 3, h, w, device="cuda")
        fig = compare(*be.step(x), *objective_and_grad(dm.module.cuda(), x))
        limit = (1e-3, 0.9999) if precision == "fp32" else (5e-2, 0.999)
        assert fig["rel_l2"] < limit[0] and fig["cosine"] > limit[1], fig
    with pytest.raises(ValueError, match="not prepared"):
        be.step(torch.randn(1, 3, 64, 64, device="cuda"))
    assert list((tmp_path / "trt").glob("*.engine"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT 10 and CUDA")
def test_a_new_bucket_builds_only_its_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMFLEET_CACHE", str(tmp_path))
    dm = build_dream_model("bvlc_googlenet", "inception3a")
    cfg = make_config(overrides=dict(model="bvlc_googlenet", layer="inception3a", backend="tensorrt", device="cuda"))
    be = TensorRTBackend.from_config(dm, cfg, torch.device("cuda"))
    be.prepare([(2, 64, 64), (2, 45, 45)])
    engines = set((tmp_path / "trt").glob("*.engine"))
    assert len(engines) == 2 and len(be.engines) == 2  # one engine (and context) per size
    assert be.stream.cuda_stream != 0  # never the legacy default stream
    assert list((tmp_path / "trt").glob("timing-*.cache"))
    be2 = TensorRTBackend.from_config(dm, cfg, torch.device("cuda"))
    be2.prepare([(2, 64, 64), (2, 45, 45), (2, 80, 80)])
    new = set((tmp_path / "trt").glob("*.engine")) - engines
    assert len(new) == 1 and "80x80" in next(iter(new)).name
    x = torch.randn(2, 3, 80, 80, device="cuda")
    _, g = be2.step(x)
    be2.synchronize()
    assert torch.isfinite(g).all()


class _FakeTRT:
    """Just enough of TensorRT 10's Python API to record what build_engine asks for."""

    __version__ = "10.0.1"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 5

    class MemoryPoolType:
        WORKSPACE = 0

    def __init__(self):
        self.calls: dict = {"profiles": []}
        fake = self

        class Profile:
            def set_shape(self, name, mn, opt, mx):
                fake.calls["profiles"].append((name, tuple(mn), tuple(opt), tuple(mx)))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls["workspace"] = size

            def add_optimization_profile(self, profile):
                fake.calls.setdefault("added", 0)
                fake.calls["added"] += 1
                return fake.calls["added"] - 1  # the profile's index (-1: invalid)

            def create_timing_cache(self, blob):
                fake.calls["timing_in"] = blob
                return "cache"

            def set_timing_cache(self, cache, ignore_mismatch):
                return True

            def get_timing_cache(self):
                class Cache:
                    def serialize(self):
                        return b"timings"
                return Cache()

            def set_flag(self, flag):  # a strongly typed build must never set FP16/BF16 flags
                raise AssertionError("precision flags set on a strongly typed network")

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls["flags"] = flags
                return "network"

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"serialized-engine"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls["parsed"] = path
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


def test_build_engine_is_strongly_typed_with_one_profile_per_shape(monkeypatch, tmp_path):
    fake = _FakeTRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    shapes = [(2, 64, 72), (2, 45, 51), (1, 64, 72)]
    blob = trt_engine.build_engine(tmp_path / "g.onnx", shapes)
    assert blob == b"serialized-engine"
    assert fake.calls["flags"] == 1 << 5  # STRONGLY_TYPED: types (and precision) come from the graph
    assert fake.calls["added"] == 2  # one profile per (H, W); N from 1 to the largest batch
    assert fake.calls["profiles"] == [("x", (1, 3, 45, 51), (2, 3, 45, 51), (2, 3, 45, 51)),
                                      ("x", (1, 3, 64, 72), (2, 3, 64, 72), (2, 3, 64, 72))]
    assert "timing_in" not in fake.calls  # no timing cache asked for
    cache = tmp_path / "timing.cache"
    trt_engine.build_engine(tmp_path / "g.onnx", shapes[:1], timing_cache=cache)
    assert fake.calls["timing_in"] == b"" and cache.read_bytes() == b"timings"  # written after the build
    trt_engine.build_engine(tmp_path / "g.onnx", shapes[:1], timing_cache=cache)
    assert fake.calls["timing_in"] == b"timings"  # and read back by the next build
