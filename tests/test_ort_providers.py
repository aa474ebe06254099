"""ONNX Runtime providers on CPU: ORT 1.31's option names and formats, no silent CPU fallback, TensorRT majors.

The name lists are ORT 1.31's documented keys (TensorRT-ExecutionProvider.md; the Python binding's TensorRT
branch in onnxruntime_pybind_state.cc; cuda_execution_provider_info.cc). Sessions are fakes: no GPU here.
"""
from __future__ import annotations

import re
import types

import pytest
from PIL import Image

from dreamfleet.export import ort_session
from dreamfleet.export.ort_session import (
    MissingProvider,
    cuda_provider_options,
    make_session,
    providers_for,
    require_providers,
    trt_provider_options,
)
from dreamfleet.export.trt_engine import network_flags

from conftest import random_rgb

TRT_KEYS = {  # accepted by the Python binding; anything else throws "Invalid TensorRT EP option"
    "device_id", "user_compute_stream", "trt_max_workspace_size", "trt_max_partition_iterations", "trt_min_subgraph_size",
    "trt_fp16_enable", "trt_int8_enable", "trt_int8_calibration_table_name", "trt_int8_use_native_calibration_table",
    "trt_dla_enable", "trt_dla_core", "trt_dump_subgraphs", "trt_engine_cache_enable", "trt_engine_cache_path",
    "trt_engine_cache_prefix", "trt_engine_decryption_enable", "trt_engine_decryption_lib_path",
    "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable", "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log",
    "trt_build_heuristics_enable", "trt_sparsity_enable", "trt_builder_optimization_level", "trt_auxiliary_streams",
    "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes", "trt_profile_max_shapes",
    "trt_profile_opt_shapes", "trt_cuda_graph_enable"}
TRT_BOOLS = {k for k in TRT_KEYS if k.endswith(("_enable", "_table", "_subgraphs", "_build", "_fallback", "_cache", "_log"))
             and k not in ("trt_int8_calibration_table_name",)}
CUDA_KEYS = {"device_id", "has_user_compute_stream", "user_compute_stream", "gpu_mem_limit", "arena_extend_strategy",
             "cudnn_conv_algo_search", "do_copy_in_default_stream", "cudnn_conv_use_max_workspace", "enable_cuda_graph",
             "cudnn_conv1d_pad_to_nc1d", "tunable_op_enable", "tunable_op_tuning_enable", "prefer_nhwc", "use_tf32",
             "enable_skip_layer_norm_strict_mode", "use_ep_level_unified_stream", "tunable_op_max_tuning_duration_ms"}


def test_tensorrt_options_use_ort_names_and_true_false(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMFLEET_CACHE", str(tmp_path))
    for stream, shapes in ((None, None), (140234, [(4, 64, 96), (2, 45, 67)])):
        opts = trt_provider_options(0, stream, shapes)
        assert set(opts) <= TRT_KEYS, set(opts) - TRT_KEYS
        assert "has_user_compute_stream" not in opts  # not an accepted key: ORT derives it from user_compute_stream
        assert all(isinstance(v, str) for v in opts.values())
        bools = {k: v for k, v in opts.items() if k in TRT_BOOLS}
        assert bools and set(bools.values()) <= {"True", "False"}, bools
        assert opts["trt_fp16_enable"] == "False"  # on, ORT drops strong typing (the fp16 max-pool mask hazard)
        assert opts["trt_engine_cache_enable"] == opts["trt_timing_cache_enable"] == "True"
        assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(tmp_path / "ort-trt")
    assert opts["user_compute_stream"] == "140234" and int(opts["trt_max_workspace_size"]) == 4 << 30
    shape = re.compile(r"^x:\d+x3x\d+x\d+$")  # input_name:dim_1xdim_2x...
    assert all(shape.match(opts[f"trt_profile_{k}_shapes"]) for k in ("min", "opt", "max"))
    assert (opts["trt_profile_min_shapes"], opts["trt_profile_max_shapes"]) == ("x:1x3x45x67", "x:4x3x64x96")


def test_cuda_options_use_ort_names_and_formats():
    opts = cuda_provider_options(2, 77, cuda_graph=True)
    assert set(opts) <= CUDA_KEYS and "has_user_compute_stream" not in opts
    assert opts["user_compute_stream"] == "77" and opts["device_id"] == "2"
    assert opts["cudnn_conv_algo_search"] in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
    assert opts["arena_extend_strategy"] in ("kNextPowerOfTwo", "kSameAsRequested")
    assert {opts["do_copy_in_default_stream"], opts["enable_cuda_graph"]} <= {"0", "1"}


def _fake_ort(got: list[str], available: list[str], cuda: str | None = "13.0"):
    """An `onnxruntime` stand-in whose sessions run on ``got`` whatever was asked (ORT's fallback)."""
    class Session:
        def __init__(self, path, sess_options=None, providers=None):
            self.asked = providers

        def get_providers(self):
            return list(got)

        def get_provider_options(self):  # what ORT reports back: the stream it really uses
            asked = {p[0]: p[1] for p in self.asked or [] if isinstance(p, tuple)}
            return {name: {"user_compute_stream": asked.get(name, {}).get("user_compute_stream", "0")}
                    for name in got}

    info = types.SimpleNamespace(cuda_version=cuda)
    return types.SimpleNamespace(__name__="fake_ort", __version__="1.31.1", InferenceSession=Session,
                                 SessionOptions=lambda: types.SimpleNamespace(), preload_dlls=lambda: None,
                                 get_available_providers=lambda: list(available),
                                 capi=types.SimpleNamespace(build_and_package_info=info))


GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_session_without_cuda_is_an_error_naming_the_libraries(tmp_path, monkeypatch):
    ort = _fake_ort(["CPUExecutionProvider"], GPU_PROVIDERS)
    monkeypatch.setattr(ort_session, "import_ort", lambda: ort)
    with pytest.raises(MissingProvider) as exc:
        make_session(tmp_path / "g.onnx", "cuda")
    msg = str(exc.value)
    assert "asked for CUDAExecutionProvider but runs on CPUExecutionProvider" in msg
    assert "libcudart.so.13" in msg and "libcudnn.so.9" in msg and "r580" in msg and "\n" not in msg
    assert require_providers(ort.InferenceSession("g"), ["CPUExecutionProvider"], ort) == ["CPUExecutionProvider"]
    cpu_build = _fake_ort(["CPUExecutionProvider"], GPU_PROVIDERS, cuda=None)
    with pytest.raises(MissingProvider, match="is the CPU build"):
        require_providers(cpu_build.InferenceSession("g"), [("CUDAExecutionProvider", {})], cpu_build)


def test_tensorrt_provider_dropped_by_ort_is_an_error(tmp_path, monkeypatch):
    """ORT's wrapper retries on CUDA+CPU when the TensorRT provider throws: that session must not run."""
    ort = _fake_ort(["CUDAExecutionProvider", "CPUExecutionProvider"], GPU_PROVIDERS)
    monkeypatch.setattr(ort_session, "import_ort", lambda: ort)
    monkeypatch.setattr(ort_session, "installed_tensorrt", lambda: ("10.16.1.11", "tensorrt-cu13-libs"))
    with pytest.raises(MissingProvider, match=r"TensorrtExecutionProvider.*libnvinfer\.so\.10.*tensorrt-cu13>=10\.13\.2,<11"):
        make_session(tmp_path / "g.onnx", "cuda", use_trt_provider=True, stream_ptr=5, shapes=[(2, 64, 64)])
    ok = _fake_ort(GPU_PROVIDERS, GPU_PROVIDERS)
    monkeypatch.setattr(ort_session, "import_ort", lambda: ok)
    session = make_session(tmp_path / "g.onnx", "cuda", use_trt_provider=True, stream_ptr=5, shapes=[(2, 64, 64)])
    (name, opts), (cuda_name, _), cpu = session.asked
    assert (name, cuda_name, cpu) == tuple(GPU_PROVIDERS) and opts["user_compute_stream"] == "5"
    monkeypatch.setattr(ok.InferenceSession, "get_provider_options", lambda self: {n: {} for n in GPU_PROVIDERS})
    with pytest.raises(MissingProvider, match="ignored user_compute_stream=5"):  # on ORT's own stream: a race
        make_session(tmp_path / "g.onnx", "cuda", use_trt_provider=True, stream_ptr=5, shapes=[(2, 64, 64)])


def test_ort_trt_refuses_a_tensorrt_other_than_10(monkeypatch):
    monkeypatch.setattr(ort_session, "import_ort", lambda: _fake_ort(GPU_PROVIDERS, GPU_PROVIDERS))
    monkeypatch.setattr(ort_session, "installed_tensorrt", lambda: ("11.4.0.106", "tensorrt-cu13-libs"))
    with pytest.raises(RuntimeError, match=r"--ort-trt: .*libnvinfer\.so\.10 .*TensorRT 11\.4\.0\.106"):
        providers_for("cuda", use_trt_provider=True)
    assert providers_for("cuda")[0][0] == "CUDAExecutionProvider"  # CUDA alone still fine
    monkeypatch.setattr(ort_session, "installed_tensorrt", lambda: None)  # e.g. a system TensorRT: the session decides
    assert providers_for("cuda", use_trt_provider=True)[0][0] == "TensorrtExecutionProvider"


def test_missing_provider_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from dreamfleet.cli import main
    from dreamfleet.engine import job

    Image.fromarray(random_rgb(40, 48)).save(tmp_path / "a.png")

    def no_cuda(*args, **kwargs):
        raise MissingProvider("ONNX Runtime session asked for CUDAExecutionProvider but runs on CPUExecutionProvider")

    monkeypatch.setattr(job, "run_job", no_cuda)
    assert main(["dream", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDAExecutionProvider" in err[0]


def test_tensorrt_network_flags_by_major():
    def trt(version):
        flag = types.SimpleNamespace(STRONGLY_TYPED=1)
        return types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flag)

    assert network_flags(trt("10.16.1.11")) == 1 << 1  # STRONGLY_TYPED on 10
    assert network_flags(trt("11.4.0.106")) == 0  # deprecated and ignored on 11: no flags
