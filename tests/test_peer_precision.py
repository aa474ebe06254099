"""Issue 17 C: ``--precision auto`` resolution on CPUs with and without native bf16 (mocked CPU flags, no timing),
the bf16-on-emulation warning, and the peer harness's algorithm pieces."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamfleet.engine.backends import precision
from dreamfleet.engine.backends.precision import cpu_has_native_bf16, resolve_precision

CPU = torch.device("cpu")
ZEN3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma f16c bmi2 vaes\n\nprocessor\t: 1\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8\n"
COOPER = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n"
ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n"


@pytest.mark.parametrize("text, native", [(ZEN3, False), (SAPPHIRE, True), (COOPER, True), (ZEN4, True),
                                          ("flags : avx2\n\nflags : avx512_bf16\n", False), ("", False)])
def test_native_bf16_is_read_from_the_first_processors_flags(text, native):
    assert cpu_has_native_bf16(text) is native


@pytest.mark.parametrize("text, resolved", [(ZEN3, "fp32"), (SAPPHIRE, "bf16"), (COOPER, "bf16")])
def test_auto_is_bf16_only_where_the_cpu_has_native_bf16(monkeypatch, caplog, text, resolved):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: cpu_has_native_bf16(text))
    with caplog.at_level(logging.INFO, logger=precision.log.name):
        assert resolve_precision("auto", CPU) == resolved
    assert f"precision auto -> {resolved}" in caplog.text
    assert "WARNING" not in [r.levelname for r in caplog.records]  # auto never picks the slow path
    for explicit in ("fp32", "fp64"):
        assert resolve_precision(explicit, CPU) == explicit


def test_explicit_bf16_without_native_bf16_warns_and_is_kept(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: cpu_has_native_bf16(ZEN3))
    with caplog.at_level(logging.WARNING, logger=precision.log.name):
        assert resolve_precision("bf16", CPU) == "bf16"
    [rec] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "no avx512_bf16/amx_bf16" in rec.message and "44x slower" in rec.message and "--precision fp32" in rec.message
    caplog.clear()
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: cpu_has_native_bf16(SAPPHIRE))
    with caplog.at_level(logging.WARNING, logger=precision.log.name):
        assert resolve_precision("bf16", CPU) == "bf16"
    assert not caplog.records


def test_cpu_bf16_runs_channels_last_by_default_and_fp32_does_not(monkeypatch):
    """oneDNN's bf16 convolutions are faster on NHWC input; CPU fp32 keeps NCHW (auto), an explicit choice wins."""
    from dreamfleet.engine.backends.eager import EagerBackend

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    from dreamfleet.engine.build import build_dream_model

    module = build_dream_model("vgg16", "features.3", random_weights=True).module
    assert EagerBackend(module, CPU, "bf16").channels_last
    assert EagerBackend(module, CPU, "auto").channels_last
    assert not EagerBackend(module, CPU, "fp32").channels_last
    assert not EagerBackend(module, CPU, "bf16", channels_last=False).channels_last


def test_peer_harness_pieces_follow_the_peer():
    from dreamfleet.benchmarks.peer_baseline import PeerDream, cascade_kernels, cascade_smooth

    k = cascade_kernels(1.5)  # [3 sigmas, 3 channels, 1, 9, 9], each normalized
    assert k.shape == (3, 3, 1, 9, 9)
    torch.testing.assert_close(k.sum(dim=(-1, -2)), torch.ones(3, 3, 1))
    assert k[0, 0, 0, 4, 4] > k[1, 0, 0, 4, 4] > k[2, 0, 0, 4, 4]  # wider sigma, lower peak
    g = torch.ones(1, 3, 20, 24)
    torch.testing.assert_close(cascade_smooth(g, 1.0), g)  # a constant passes (reflect padding)
    peer = PeerDream(pyramid_size=4, pyramid_ratio=1.4, iterations=1)
    # the peer rounds each level from the base (float32), unlike dreamfleet's floor from the level above
    assert [peer.level_shape((192, 256), lv) for lv in range(4)] == [(70, 93), (98, 131), (137, 183), (192, 256)]
    out = PeerDream(pyramid_size=2, iterations=1, shift=4).dream(np.full((40, 48, 3), 0.5, np.float32))
    assert out.shape == (40, 48, 3) and out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0


def test_peer_bench_cases_command_and_per_round_ratios():
    from dreamfleet.benchmarks.peer_bench import cases, dream_command, summarize, table

    assert [c[0] for c in cases(())] == ["peer", "dreamfleet-b1", "dreamfleet-b8"]
    assert [c[0] for c in cases(("fp32", "auto"), allocator_ab=True)][3:] == [
        "dreamfleet-b1-nocache", "dreamfleet-b8-nocache", "dreamfleet-b8-auto"]
    assert [c[0] for c in cases((), lanes_ab=True)] == [  # lanes and no lanes alternate
        "peer", "dreamfleet-b1", "dreamfleet-b1-nolanes", "dreamfleet-b8", "dreamfleet-b8-nolanes"]
    assert dream_command(Path("in"), Path("out"), 1, 2, lanes=1)[-2:] == ["--cpu-lanes", "1"]
    assert "--cpu-lanes" not in dream_command(Path("in"), Path("out"), 1, 2)  # lanes: the default (auto)
    cmd = " ".join(dream_command(Path("in"), Path("out"), 8, 2, "auto"))
    for part in ("dream in -o out", "--model vgg16 --layer features.22 --random-weights", "--octaves 4",
                 "--octave-scale 1.4", "--iterations 10", "--jitter 32", "--smooth gaussian", "--batch-size 8",
                 "--threads 2", "--precision auto", "--device cpu"):
        assert part in cmd, part
    peer = [dict(images=8, seconds=80.0, cpu_seconds=160.0, page_faults=800), dict(images=8, seconds=40.0,
                                                                                    cpu_seconds=80.0, page_faults=800)]
    ours = [dict(images=8, seconds=40.0, cpu_seconds=40.0, page_faults=0), dict(images=8, seconds=40.0,
                                                                                 cpu_seconds=40.0, page_faults=0)]
    row = summarize("dreamfleet-b8", ours, peer)
    assert row["vs_peer_rounds"] == [2.0, 1.0] and row["vs_peer"] == 1.5  # ratios within each round, then the median
    assert row["cpu_s_per_image"] == 5.0 and row["cores_busy"] == 1.0 and row["page_faults_per_image"] == 0
    row.update(env={"cpu_model": "AMD EPYC"}, threads=2)
    assert "| dreamfleet-b8 | 0.2000 |" in table([row]) and "AMD EPYC" in table([row])


def test_peer_child_runs_without_the_clis_own_process_settings(monkeypatch):
    from dreamfleet.benchmarks.peer_bench import child_env

    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")  # set by the dreamfleet CLI for itself
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # a user's setting: reaches every case
    peer, ours = child_env(2, plain=True), child_env(2, DREAMFLEET_CACHE_HOST_ALLOCATIONS="1")
    assert "THP_MEM_ALLOC_ENABLE" not in peer and "DREAMFLEET_CACHE_HOST_ALLOCATIONS" not in peer
    assert ours["THP_MEM_ALLOC_ENABLE"] == "1" and ours["DREAMFLEET_CACHE_HOST_ALLOCATIONS"] == "1"
    assert peer["OMP_NUM_THREADS"] == ours["OMP_NUM_THREADS"] == "2"
    assert peer["OMP_WAIT_POLICY"] == ours["OMP_WAIT_POLICY"] == "PASSIVE"
