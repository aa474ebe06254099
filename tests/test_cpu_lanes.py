"""CPU lanes (engine/backends/lanes.py): the same results as without them, bit for bit, and where they apply."""
from __future__ import annotations

import threading

import pytest
import torch

from dreamfleet.backends import create_backend
from dreamfleet.engine.backends.eager import EagerBackend
from dreamfleet.engine.backends.lanes import CpuLanes, auto_lanes, lane_chunks, make_lanes, queue_on_lanes
from dreamfleet.engine.build import build_dream_model
from dreamfleet.engine.config import make_config
from dreamfleet.engine.loop import dream_tensor
from dreamfleet.engine.runner import DreamRunner
from dreamfleet.engine.space import ImageSpace

CPU = torch.device("cpu")
KEYS = ["a.jpg", "b/c.png", "d.png", "e/f.jpg"]


def _images(n: int, h: int, w: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, h, w, generator=g, dtype=dtype)


def _cfg(**kw):
    values = dict(model="bvlc_googlenet", layer="inception3b", octaves=2, iterations=2, jitter=8, device="cpu")
    values.update(kw)
    return make_config("classic", overrides=values)


@pytest.fixture(scope="module")
def lanes():
    pool = CpuLanes(2, 1)
    yield pool
    pool.close()


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("fp64", torch.float64)])
def test_lanes_equal_no_lanes_bit_for_bit(lanes, precision, dtype):
    """Two lanes of 1 thread, a few steps: each chunk's dream == the same chunk dreamed without lanes at the
    same thread count, exactly; with chunks of one image (the issue's 256x192 photos), a batch on the lanes ==
    every image dreamed alone, exactly. Against 2 threads without lanes: to rounding, because torch's reductions (the
    per-image gradient norm) and some oneDNN fp32 kernels (GoogLeNet's 1x1 convolutions) split sums by thread count."""
    cfg = _cfg(precision=precision)
    dm = build_dream_model(cfg.model, cfg.layer)
    be = EagerBackend(dm.module, CPU, precision)
    space = ImageSpace.create(dm.spec, cfg, CPU, dtype)
    x = _images(4, 48, 64, dtype)

    def dream(pixels, keys):
        return dream_tensor(be, pixels, cfg, dm.spec, keys, space)  # [n,3,H,W] floats: no quantization hides a bit

    def on_lanes(xs, keys, **kw):
        _, pending, fence = queue_on_lanes(lanes, xs, keys, dream, **kw)
        fence.wait()
        return torch.stack(pending.wait())

    def without_lanes(threads):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            pairs = torch.cat([dream(x[:2], KEYS[:2]), dream(x[2:], KEYS[2:])])
            return pairs, torch.cat([dream(x[i:i + 1], KEYS[i:i + 1]) for i in range(4)])
        finally:
            torch.set_num_threads(before)

    laned = on_lanes(x, KEYS)  # chunks [2, 2]: 48x64 images are small
    one_by_one = on_lanes(x, KEYS, budget=1)  # chunks [1, 1, 1, 1]
    pairs, alone = without_lanes(lanes.threads)
    assert torch.equal(laned, pairs)
    assert torch.equal(one_by_one, alone)
    assert not torch.equal(alone[0], alone[1])  # images differ: nothing was dropped or repeated
    assert torch.equal(on_lanes(x[2:3], KEYS[2:3])[0], alone[2])  # batch 1: one chunk on one lane
    pairs2, alone2 = without_lanes(2)
    bound = 1e-10 if dtype == torch.float64 else 1e-4  # relative to the dream's change of the image
    for got, want in ((laned, pairs2), (one_by_one, alone2)):
        assert ((got - want).norm() / (want - x).norm()).item() < bound


def test_runner_with_lanes_writes_what_runner_without_writes():
    """The device loop's batches (split into chunks on the lanes) give the same uint8 results with lanes."""
    x = (_images(3, 48, 64) * 255).to(torch.uint8)
    keys = KEYS[:3]
    out = {}
    for n in (1, 2):
        runner = DreamRunner(_cfg(cpu_lanes=n, batch_size=3, precision="fp64"), create_backend)
        assert (runner.lanes is None) == (n == 1)
        try:
            out[n] = [r for r, _ in runner._dream(x, keys)]
            out[n] += [r for r, _ in runner._dream(x[:1], keys[:1])]  # batch 1
        finally:
            runner.close()
    assert all(torch.equal(a, b) for a, b in zip(out[1], out[2], strict=True))


def test_lane_threads_are_per_thread_and_the_default_is_restored():
    before = torch.get_num_threads()
    pool = CpuLanes(2, 1)
    try:
        seen = [pool.submit(torch.get_num_threads).result() for _ in range(4)]
        assert seen == [1] * 4
        assert torch.get_num_threads() == before
        later = []
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert later == [before]  # a thread made after the lanes gets the job's count, not the lanes'
        assert pool.describe() == {"cpu_lanes": 2, "threads_per_lane": 1}
    finally:
        pool.close()


def test_chunks_cover_the_batch_and_respect_the_budget():
    assert lane_chunks(8, 192, 256, 4, 2) == [1] * 8  # 12.6 MB of first-layer activations per image
    assert lane_chunks(8, 32, 32, 4, 2) == [4, 4]  # small images: one chunk per lane
    assert lane_chunks(5, 32, 32, 4, 2) == [3, 2]
    assert lane_chunks(1, 512, 512, 8, 4) == [1]
    assert lane_chunks(7, 64, 64, 4, 2, budget=64 * 64 * 64 * 4 * 2) == [2, 2, 2, 1]
    for n in range(1, 20):
        assert sum(lane_chunks(n, 100, 120, 4, 3)) == n


def test_where_lanes_apply():
    assert auto_lanes(1) == 1 and auto_lanes(2) == 2 and auto_lanes(64) == 2
    meta = torch.device("meta")
    for kw in (dict(device=meta), dict(backend="compile"), dict(precision="bf16"), dict(reproducible=True),
               dict(guided=True)):
        args = dict(device=CPU, backend="eager", precision="fp32", reproducible=False, guided=False)
        assert make_lanes(2, **dict(args, **kw)) is None, kw
    assert make_lanes(1, CPU, "eager", "fp32", False, False) is None  # off
    pool = make_lanes(3, CPU, "eager", "fp64", False, False)
    try:
        assert pool.n == 3 and pool.threads == max(1, torch.get_num_threads() // 3)
    finally:
        pool.close()


def test_option_range_and_not_hashed():
    assert _cfg(cpu_lanes=2).param_hash() == _cfg(cpu_lanes=1).param_hash() == _cfg().param_hash()
    for bad in (-1, 65):
        with pytest.raises(ValueError, match="cpu_lanes.*--cpu-lanes"):
            _cfg(cpu_lanes=bad)
