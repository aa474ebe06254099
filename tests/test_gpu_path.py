"""The GPU execution path (issue 9): what can be checked on CPU/meta here, and gpu-marked tests for the rest."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dreamfleet.engine.backends.compiled import CompiledBackend, resolve_compile_mode
from dreamfleet.engine.backends.eager import EagerBackend
from dreamfleet.engine.backends.precision import cpu_has_native_bf16, fold_batchnorms, resolve_precision
from dreamfleet.engine.build import build_dream_model
from dreamfleet.engine.config import make_config
from dreamfleet.engine.step import objective_and_grad
from dreamfleet.engine.transfer import HostTransfer

CPU = torch.device("cpu")
CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class CastCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.casts = self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.casts += func is torch.ops.aten._to_copy.default
        return func(*args, **(kwargs or {}))


def test_half_precision_casts_weights_once_and_keeps_the_callers_module():
    dm = build_dream_model("bvlc_googlenet", "inception3b")
    x = torch.rand(2, 3, 64, 64)
    _, g32 = EagerBackend(dm.module, CPU, "fp32", False).step(x)
    bf = EagerBackend(dm.module, CPU, "bf16", False)
    assert next(dm.module.features.parameters()).dtype == torch.float32  # the caller's module untouched

    def autocast_objective(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return dm.module(x).float()

    counts = {}
    for name, fn in (("autocast", autocast_objective), ("cast-once", bf.objective)):
        with CastCount() as c:
            _, g = objective_and_grad(fn, x)
        counts[name] = (c.casts, c.ops)
        assert F.cosine_similarity(g.flatten(), g32.flatten(), dim=0) > 0.95, name
    assert counts["cast-once"][0] * 2 < counts["autocast"][0]  # measured: 12 vs 35 here, 12 vs 53 at inception4c
    assert counts["cast-once"][1] < counts["autocast"][1]  # BatchNorms folded: fewer kernels


def test_folded_batchnorms_give_the_same_features_in_fp64():
    import copy

    dm = build_dream_model("bvlc_googlenet", "inception3a", random_weights=True)
    feats = dm.module.features.double()
    for m in feats.modules():  # non-trivial statistics, so the fold is really exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    folded = copy.deepcopy(feats).eval()
    assert fold_batchnorms(folded) > 0
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(folded(x)["inception3a"], feats(x)["inception3a"], rtol=1e-10, atol=1e-10)


def test_precision_auto_resolves_per_device():
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("auto", CPU) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("auto", torch.device("meta")) == "fp32"
    dm = build_dream_model("bvlc_googlenet", "inception3a")
    assert EagerBackend(dm.module, CPU, "auto").precision == resolve_precision("auto", CPU)
    assert make_config(overrides=dict(precision="auto")).precision == "auto"


def test_compile_mode_option_and_validation():
    assert resolve_compile_mode("auto", CPU) == "default"
    assert resolve_compile_mode(None, CPU) == "default"
    with pytest.raises(ValueError, match="needs a CUDA device; valid on cpu: default"):
        resolve_compile_mode("graphs", CPU)
    with pytest.raises(ValueError, match="valid: auto, default, reduce-overhead"):
        resolve_compile_mode("fast", CPU)
    with pytest.raises(ValueError, match="unknown compile_mode"):
        make_config(overrides=dict(compile_mode="fast"))
    from dreamfleet.cli import build_parser

    args = build_parser().parse_args(["dream", "x.jpg", "-o", "out", "--compile-mode", "graphs", "--ort-trt"])
    assert args.compile_mode == "graphs" and args.ort_trt is True


def test_transfer_uint8_up_and_down_on_cpu():
    tr = HostTransfer(CPU)
    u8 = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    up = tr.upload(u8)
    assert up.dtype == torch.float32
    torch.testing.assert_close(up, u8.float() / 255.0, rtol=0, atol=0)
    x = torch.rand(2, 3, 5, 7)
    assert torch.equal(tr.upload(x), x)  # float pixels pass through unchanged
    edges = torch.tensor([0.0, 0.5 / 255, 1.5 / 255, 0.49999, 0.5, 254.5 / 255, 1.0, 1.2, -0.1])
    pix = torch.cat([torch.rand(2 * 3 * 5 * 7 - edges.numel()), edges]).view(2, 3, 5, 7)
    got = tr.download(pix).wait()
    ref = (np.clip(pix.numpy(), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)  # what save_image does to floats
    assert len(got) == 2 and got[0].dtype == torch.uint8
    assert np.array_equal(torch.stack(got).numpy(), ref)
    waited = []
    meta = tr.download(torch.empty(2, 3, 5, 7, device="meta")).wait(lambda: waited.append(1))
    assert waited == [1] and meta[0].shape == (3, 5, 7)  # a simulated device: its own wait, zeros back
    sim = HostTransfer(torch.device("meta"))
    sim.upload(u8)  # the simulated job's writers encode the input photo as the dream's stand-in
    assert torch.equal(torch.stack(sim.download(torch.empty(2, 3, 5, 7, device="meta")).wait()), u8)
    with pytest.raises(ValueError, match="valid: uint8, float32"):
        tr.upload(torch.zeros(1, 3, 2, 2, dtype=torch.int32))


def test_roofline_counts_match_the_flop_counter_and_simulated_rows():
    from dreamfleet.benchmarks import flops
    from dreamfleet.benchmarks.roofline import DEVICES, StepModel, measure_step
    from dreamfleet.engine.models import get_spec

    cfg = make_config("classic", overrides=dict(layer="inception3a"))
    dm = build_dream_model("bvlc_googlenet", "inception3a", random_weights=True)
    expected = 2 * flops.step_flops(dm.module, 64, 64)
    counter = EagerBackend(dm.module, torch.device("meta"), "fp32", False)
    counts = measure_step(counter, cfg, get_spec("bvlc_googlenet"), 2, 64, 64)
    eager, fused = counts.totals("eager"), counts.totals("fused")
    assert eager["flops"] == expected  # the recorder sees every conv, forward and input-gradient
    assert fused["kernels"] < eager["kernels"] and fused["bytes"] < eager["bytes"] and fused["flops"] == expected
    sm = {s: StepModel(DEVICES["h100"], "bf16", s, lambda n, h, w: counts) for s in ("eager", "graphs", "fused")}
    t = {s: m.step_seconds(2, 64, 64) for s, m in sm.items()}
    assert t["fused"] < t["graphs"] < t["eager"]
    assert sm["graphs"].host_seconds(2, 64, 64) < sm["eager"].host_seconds(2, 64, 64)


def test_fast_meta_kernels_keep_shapes_and_dtypes():
    from dreamfleet.benchmarks.fastmeta import fast_meta_kernels

    m = torch.device("meta")
    z, g, s = torch.empty(2, 3, 8, 6, device=m), torch.empty(2, 3, 8, 6, device=m), torch.empty(2, 1, 1, 1, device=m)
    lo, idx = torch.empty(1, 3, 1, 1, device=m), torch.arange(5, device=m)
    cases = [lambda: torch.clamp(z, lo, lo), lambda: torch.addcdiv(z, g, s), lambda: torch.remainder(idx - 3, 5),
             lambda: z.clamp(0.0, 1.0), lambda: F.interpolate(z, size=(11, 9), mode="bilinear", align_corners=False),
             lambda: F.interpolate(z, size=(11, 9), mode="nearest")]
    plain = [(c().shape, c().dtype) for c in cases]
    with fast_meta_kernels():
        assert [(c().shape, c().dtype) for c in cases] == plain


def test_simulated_bench_row(tmp_path):
    from dreamfleet.benchmarks.simulate import run_simulation

    rows = run_simulation("h100", ("bvlc_googlenet",), ("fused",), batch=2, images=2, precision="bf16", out=tmp_path)
    (row,) = rows
    assert row["label"] == "simulated" and row["done"] == 2 and "simulated" in row["device"]
    assert 0 < row["predicted_device_utilization"] <= 1.0 and row["predicted_images_per_s"] > 0
    assert (tmp_path / "simulated_h100.jsonl").read_text().count("\n") == 1
    with pytest.raises(ValueError, match="valid: h100"):
        run_simulation("tpu", ("bvlc_googlenet",), ("fused",), 2, 2, "bf16", tmp_path)


def test_ort_provider_options_are_explicit(tmp_path, monkeypatch):
    """Option names and value formats as ONNX Runtime 1.31 parses them (tests/test_ort_providers.py checks more)."""
    from dreamfleet.export.ort_backend import cuda_provider_options, trt_provider_options

    monkeypatch.setenv("DREAMFLEET_CACHE", str(tmp_path))
    opts = cuda_provider_options(1, 0, cuda_graph=True)
    assert opts["device_id"] == "1" and opts["cudnn_conv_algo_search"] == "HEURISTIC"
    assert opts["enable_cuda_graph"] == "1" and "user_compute_stream" not in opts  # 0 = the null stream: not set
    opts = cuda_provider_options(0, 1234, cuda_graph=False)
    assert opts["user_compute_stream"] == "1234" and "has_user_compute_stream" not in opts  # implied by ORT
    trt = trt_provider_options(0, 99, [(8, 64, 96), (8, 45, 67), (3, 64, 96)])
    assert trt["trt_profile_min_shapes"] == "x:1x3x45x67" and trt["trt_profile_max_shapes"] == "x:8x3x64x96"
    assert trt["trt_engine_cache_path"].startswith(str(tmp_path)) and trt["trt_timing_cache_enable"] == "True"
    assert trt["trt_fp16_enable"] == "False" and trt["user_compute_stream"] == "99"


def test_ort_tensorrt_provider_only_on_request(monkeypatch):
    from dreamfleet.export import ort_backend

    seen = {}
    monkeypatch.setattr(ort_backend, "cached_export", lambda dm, precision: "g.onnx")
    monkeypatch.setattr(ort_backend, "expected_metadata", lambda dm, precision: {})
    monkeypatch.setattr(ort_backend.OnnxRuntimeBackend, "__init__",
                        lambda self, path, device, expected, use_trt_provider=False: seen.update(trt=use_trt_provider))
    for flag in (False, True):
        cfg = make_config(overrides=dict(backend="onnxruntime", ort_trt=flag, precision="auto"))
        ort_backend.OnnxRuntimeBackend.from_config(None, cfg, torch.device("cuda"))
        assert seen["trt"] is flag


def test_trt_engine_io_is_validated():
    from dreamfleet.export.trt_engine import check_io

    class T:  # the TensorRT enums check_io compares against
        class TensorIOMode:
            INPUT, OUTPUT = "in", "out"

        class DataType:
            FLOAT, HALF = "f32", "f16"

    class Engine:
        def __init__(self, io):
            self.io = io
            self.num_io_tensors = len(io)

        def get_tensor_name(self, i):
            return list(self.io)[i]

        def get_tensor_mode(self, name):
            return self.io[name][0]

        def get_tensor_dtype(self, name):
            return self.io[name][1]

    good = {"x": ("in", "f32"), "objective": ("out", "f32"), "grad": ("out", "f32")}
    check_io(Engine(good), T)
    with pytest.raises(RuntimeError, match="does not match"):
        check_io(Engine({"input": ("in", "f32"), "objective": ("out", "f32"), "grad": ("out", "f32")}), T)
    with pytest.raises(RuntimeError, match="expected out FLOAT"):
        check_io(Engine(dict(good, grad=("out", "f16"))), T)


def test_gpu_check_refuses_without_cuda_and_compares_rows(monkeypatch, capsys):
    from dreamfleet.benchmarks import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main() == 2 and "needs a CUDA device" in capsys.readouterr().err
    assert gpu_check.simulated_key("NVIDIA H100 80GB HBM3") == "h100" and gpu_check.slug("NVIDIA L4") == "nvidia-l4"
    measured = [dict(status="ok", model="vgg16", backend="compile", precision="bf16", batch_size=32, images_per_s=61.0)]
    simulated = [dict(model="vgg16", setting="fused", precision="bf16", predicted_images_per_s=38.6,
                      device_bound_images_per_s=80.9)]
    assert "| vgg16 | compile | bf16 | 32 | 61.0 | fused bf16 | 38.6 (80.9) |" in gpu_check.compare_table(measured, simulated)


# ---- CUDA-only paths: run by `make gpu-check` on a machine with a GPU ----

@pytest.mark.gpu
@CUDA_ONLY
@pytest.mark.parametrize("mode", ["graphs", "reduce-overhead"])
def test_cuda_graph_modes_match_eager(mode):
    cuda = torch.device("cuda")
    dm = build_dream_model("bvlc_googlenet", "inception3b")
    comp = CompiledBackend(dm.module, cuda, "fp32", mode=mode)
    assert torch.backends.cudnn.benchmark
    comp.prepare([(2, 64, 96)])
    eager = EagerBackend(dm.module, cuda, "fp32")
    for _ in range(3):  # replays with new inputs
        x = torch.rand(2, 3, 64, 96, device=cuda)
        _, g1 = eager.step(x)
        _, g2 = comp.step(x)
        assert F.cosine_similarity(g1.flatten(), g2.flatten(), dim=0) > 0.9999


@pytest.mark.gpu
@CUDA_ONLY
def test_cuda_transfer_round_trip_pinned_and_async():
    cuda = torch.device("cuda")
    tr = HostTransfer(cuda)
    u8 = torch.randint(0, 256, (3, 3, 16, 24), dtype=torch.uint8)
    up = tr.upload(u8)
    assert up.is_cuda and torch.equal((up * 255.0).round().to(torch.uint8).cpu(), u8)
    assert all(buf.is_pinned() for buf, _ in tr._up.values())
    results = tr.download(up).wait()
    assert torch.equal(torch.stack(results), u8) and results[0].is_pinned()
    again = tr.download(up).wait()  # the ring hands out another buffer: the first results stay valid
    assert again[0].data_ptr() != results[0].data_ptr() and torch.equal(torch.stack(results), u8)


@pytest.mark.gpu
@CUDA_ONLY
def test_cuda_upload_does_not_queue_behind_the_previous_batchs_download():
    """The runner uploads batch k+1 after queuing batch k's download: that copy must not wait for k's compute."""
    cuda = torch.device("cuda")
    tr = HostTransfer(cuda)
    u8 = torch.randint(0, 256, (2, 3, 16, 24), dtype=torch.uint8)
    out = tr.upload(u8)
    torch.cuda._sleep(1 << 30)  # batch k: a long kernel on the compute stream (~0.5-1 s)
    pending = tr.download(out)  # k's results, copied once k is done
    tr.upload(u8)  # batch k+1's pixels
    _, copied = tr._up[(tuple(u8.shape), torch.uint8)]
    copied.synchronize()
    assert not torch.cuda.current_stream(cuda).query()  # k+1's pixels arrived while k still computes
    assert torch.equal(torch.stack(pending.wait()), u8)

@pytest.mark.gpu
@CUDA_ONLY
def test_cuda_precision_auto_and_bf16_cast_once():
    cuda = torch.device("cuda")
    expected = "bf16" if torch.cuda.get_device_capability(cuda)[0] >= 8 else "fp32"
    assert resolve_precision("auto", cuda) == expected
    dm = build_dream_model("bvlc_googlenet", "inception4c")
    x = torch.rand(4, 3, 224, 224, device=cuda)
    _, g32 = EagerBackend(dm.module, cuda, "fp32").step(x)
    _, gbf = EagerBackend(dm.module, cuda, "bf16").step(x)
    assert F.cosine_similarity(gbf.flatten(), g32.flatten(), dim=0) > 0.95
