"""Tiled dreaming: the tile grid, exactness, the tile error bound, shared batches, backends and whole jobs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dreamfleet.engine.device_loop as device_loop_mod
import dreamfleet.engine.tiled as tiled_mod
from dreamfleet.backends import create_backend
from dreamfleet.engine.backends.base import Backend, Fence
from dreamfleet.engine.backends.eager import EagerBackend
from dreamfleet.engine.build import build_dream_model
from dreamfleet.engine.config import make_config
from dreamfleet.engine.job import run_job
from dreamfleet.engine.loop import dream_tensor
from dreamfleet.engine.octaves import plan_shapes
from dreamfleet.engine.report import read_records
from dreamfleet.engine.runner import DreamRunner, WorkItem
from dreamfleet.engine.space import ImageSpace
from dreamfleet.engine.tiled import TileScheduler
from dreamfleet.engine.tiling import ALIGN, axis_windows, tiled_gradient, window_side
from dreamfleet.engine.transfer import HostTransfer

from conftest import random_rgb

CPU = torch.device("cpu")
# the documented bound (README, "Tiling"): bvlc_googlenet inception4c, tile 256, default overlap, 768x512 photo
DEFAULT_OVERLAP_BOUND = 0.04


class Recorder(Backend):
    name = "recorder"

    def __init__(self, inner: Backend) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def step(self, x):
        self.seen.append((x.shape[0], *x.shape[-2:]))
        return self.inner.step(x)


@pytest.mark.parametrize("length,tile,overlap", [(2400, 512, 64), (1142, 512, 64), (1000, 256, 64), (641, 512, 64),
                                                 (640, 512, 64), (97, 32, 16), (5000, 96, 0)])
def test_grid_partitions_the_axis_with_context(length, tile, overlap):
    side = window_side(tile, overlap)
    wins = axis_windows(length, tile, overlap)
    assert wins[0][1] == 0 and wins[-1][2] == length
    for (s, c0, c1), nxt in zip(wins, wins[1:] + [None]):
        assert s % ALIGN == 0 and s <= c0 < c1 <= s + side
        assert c0 == 0 or c0 - s >= overlap  # context before the core, unless it is the image border
        assert c1 == length or s + side - c1 >= overlap
        if nxt:
            assert nxt[1] == c1
        assert s + side < length + ALIGN  # at most ALIGN - 1 px of zero padding past the end
    if length <= side:
        assert wins == [(0, 0, length)]


def test_tiled_gradient_is_exact_when_the_halo_covers_the_receptive_field():
    # conv2 sees an 11 px receptive field (conv1 7/2, maxpool1 3/2): a 32 px halo holds it twice over,
    # and with H - S, W - S multiples of 32 no window is padded, so the tiles add up to the whole gradient
    dm = build_dream_model("bvlc_googlenet", "conv2")
    be = EagerBackend(dm.module, CPU, "fp64")
    x = torch.rand(1, 3, 192, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, full = be.step(x)
    got = tiled_gradient(be.step, x, 64, 32, 3)
    full, got = full / full.abs().mean(), got / got.abs().mean()  # the mean objective's scale differs per window
    assert ((got - full).norm() / full.norm()).item() < 1e-10


@pytest.mark.slow  # one 768x512 inception4c gradient, untiled and tiled: ~15 s on 2 quiet cores
def test_default_overlap_stays_under_the_documented_bound():
    from dreamfleet.benchmarks.tile_error import normalized, photo

    cfg = make_config()
    assert cfg.tile_overlap == 64
    dm = build_dream_model(cfg.model, cfg.layer)
    be = EagerBackend(dm.module, CPU)
    z = ImageSpace.create(dm.spec, cfg, CPU, torch.float32).to_model(photo(768, 512))
    ref = normalized(be.step(z)[1])
    got = normalized(tiled_gradient(be.step, z, 256, cfg.tile_overlap, 4))
    err = ((got - ref).norm() / ref.norm()).item()
    print(f"tile error at the default overlap: {err:.4f} (README: 0.025 measured, bound {DEFAULT_OVERLAP_BOUND})")
    assert err < DEFAULT_OVERLAP_BOUND


def _write(path, h, w, seed=0):
    Image.fromarray(random_rgb(h, w, seed)).save(path)
    return path


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[1,3,H,W] pixels in [0,1] -> HWC uint8, rounded as the runner's download rounds."""
    return HostTransfer.quantize(pixels)[0].permute(1, 2, 0).numpy()


def _capture(monkeypatch) -> dict:
    saved: dict = {}
    def encode(path, rgb, alpha, meta):  # what the runner's writer would encode; nothing real is written
        saved[str(path)] = rgb
        return b""

    monkeypatch.setattr(device_loop_mod, "encode_image", encode)
    return saved


def test_scheduler_on_images_within_one_window_equals_the_untiled_loop(tmp_path, monkeypatch, fast_overrides):
    """The scheduler's own path (admission, generators, shared untiled batches) changes nothing: fp64."""
    cfg = make_config(overrides=dict(fast_overrides, precision="fp64", tile=64, tile_overlap=16, jitter=8))
    runner = DreamRunner(cfg, create_backend)
    items = [WorkItem(str(_write(tmp_path / f"{i}.png", 64, 96, i)), f"{i}.png", str(tmp_path / f"o{i}.png"), (64, 96))
             for i in range(3)]
    saved, records = _capture(monkeypatch), []
    TileScheduler(runner, records.append).run(items)
    assert [r.status for r in records] == ["done"] * 3
    for item in items:
        x = runner.load_input(item).pixels[None].to(torch.float64)  # the scheduler's own input, bit for bit
        ref = dream_tensor(runner.backend, x, cfg, runner.dm.spec, [item.rel])
        assert np.array_equal(saved[item.output], _to_uint8(ref))  # both quantized as the runner's download does


def test_image_no_larger_than_one_tile_dreams_exactly_as_untiled(tmp_path, fast_overrides):
    src = tmp_path / "in"
    src.mkdir()
    _write(src / "a.png", 64, 96)
    outs = {}
    for tile in (0, 64):
        cfg = make_config(overrides=dict(fast_overrides, tile=tile, tile_overlap=16))
        run_job(cfg, [str(src)], tmp_path / f"out{tile}", create_backend, progress=False)
        outs[tile] = np.asarray(Image.open(tmp_path / f"out{tile}" / "a.png"))
    assert np.array_equal(outs[0], outs[64])


def test_tiles_of_several_images_and_octaves_share_one_batch_shape(tmp_path, monkeypatch, fast_overrides):
    cfg = make_config(overrides=dict(fast_overrides, layer="inception3a", tile=64, tile_overlap=16, max_side=0,
                                     octaves=3, batch_size=3))
    runner = DreamRunner(cfg, create_backend)
    runner.backend = rec = Recorder(runner.backend)
    sizes = [(200, 150), (200, 150), (96, 260), (120, 120)]
    items = [WorkItem(str(_write(tmp_path / f"{i}.png", h, w, i)), f"{i}.png", str(tmp_path / f"o{i}.png"), (h, w))
             for i, (h, w) in enumerate(sizes)]
    saved, records = _capture(monkeypatch), []
    sched = TileScheduler(runner, records.append)
    sched.run(items)
    assert sorted(r.status for r in records) == ["done"] * 4
    assert {saved[i.output].shape for i in items} == {(h, w, 3) for h, w in sizes}
    side = window_side(64, 16)
    tile_shapes = {s for s in rec.seen if s[1:] == (side, side)}
    assert tile_shapes == {(3, side, side)}  # one shape, short batches zero-filled
    assert sched.tile_slots_filled > 2 * sched.tile_batches  # batches mostly full: tiles of several images
    planned = plan_shapes([i.hw for i in items], cfg.batch_size, cfg.octaves, cfg.octave_scale, runner.dm.spec.min_size,
                          tile=cfg.tile, tile_overlap=cfg.tile_overlap)
    largest = {(h, w): n for n, h, w in planned}
    assert all(n <= largest.get((h, w), 0) for n, h, w in rec.seen), (rec.seen, planned)


def test_tiled_job_writes_full_size_and_a_bad_image_fails_alone(tmp_path, fast_overrides):
    src = tmp_path / "in"
    src.mkdir()
    _write(src / "big.png", 180, 250)
    _write(src / "small.png", 64, 64)
    (src / "broken.png").write_bytes(b"not a png")
    cfg = make_config(overrides=dict(fast_overrides, tile=64, tile_overlap=16, max_side=0, snap=1, batch_size=4))
    report = run_job(cfg, [str(src)], tmp_path / "out", create_backend, progress=False)
    rows = {r["rel"]: r for r in read_records(tmp_path / "out")}
    assert {k: r["status"] for k, r in rows.items()} == {"big.png": "done", "small.png": "done", "broken.png": "failed"}
    assert Image.open(tmp_path / "out" / "big.png").size == (250, 180)
    assert report.counts()["done"] == 2


def test_tiling_refuses_objectives_that_do_not_add_up():
    with pytest.raises(ValueError, match="cannot be tiled.*l2, channel, guide"):
        make_config(overrides=dict(tile=256, objective="norm"))
    with pytest.raises(ValueError, match="minimum input of 75"):
        make_config(overrides=dict(tile=32, tile_overlap=8, model="inception_v3", random_weights=True))
    assert make_config().param_hash() == make_config(overrides=dict(tile_overlap=96)).param_hash()  # tiling off
    assert make_config(overrides=dict(tile=256)).param_hash() != make_config().param_hash()


def test_onnxruntime_backend_tiles_like_eager(request, tmp_path_factory, tmp_path, monkeypatch):
    from export_fixtures import exported

    dm, path = exported(request.config, tmp_path_factory, "bvlc_googlenet")
    # pixel noise, not random_rgb's flat 8x8 blocks: flat blocks make exact max-pool ties, which ONNX Runtime
    # (first maximum) and torch route differently, so the two dreams would part for a reason unrelated to tiles
    noise = np.random.default_rng(0).integers(0, 256, size=(96, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "a.png")
    item = WorkItem(str(tmp_path / "a.png"), "a.png", str(tmp_path / "o.png"), (96, 160))
    outs = []
    for backend in ("eager", "onnxruntime"):
        cfg = make_config(overrides=dict(model="bvlc_googlenet", backend=backend, onnx=str(path), device="cpu",
                                         tile=32, tile_overlap=16, octaves=2, iterations=2, jitter=8, batch_size=4))
        saved = _capture(monkeypatch)
        runner = DreamRunner(cfg, create_backend)
        records = runner.process([item])
        runner.close()
        assert [r.status for r in records] == ["done"]
        outs.append(saved[item.output])
    diff = np.abs(outs[0].astype(np.int16) - outs[1]).max()  # uint8 outputs, fp32 eager vs onnxruntime
    assert diff <= 1, diff


@pytest.mark.slow  # one torch.compile of the tile shape: ~1 minute on 2 cores
def test_compile_backend_runs_the_planned_tile_shape(tmp_path, monkeypatch):
    noise = np.random.default_rng(0).integers(0, 256, size=(96, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "c.png")
    item = WorkItem(str(tmp_path / "c.png"), "c.png", str(tmp_path / "o.png"), (96, 160))
    outs = []
    for backend in ("eager", "compile"):
        cfg = make_config(overrides=dict(layer="inception3a", backend=backend, tile=32, tile_overlap=16, octaves=2,
                                         iterations=1, jitter=8, batch_size=4, max_side=0, snap=1))
        saved = _capture(monkeypatch)
        runner = DreamRunner(cfg, create_backend)
        shapes = plan_shapes([item.hw], cfg.batch_size, cfg.octaves, cfg.octave_scale, runner.dm.spec.min_size,
                             tile=cfg.tile, tile_overlap=cfg.tile_overlap)
        assert shapes == [(4, 64, 64)]  # both octaves are tiled: one shape for the whole job
        runner.prepare(shapes)
        assert [r.status for r in runner.process([item])] == ["done"]
        runner.close()
        outs.append(saved[item.output])
    assert np.abs(outs[0].astype(np.int16) - outs[1]).max() <= 1  # uint8 outputs, fp32 eager vs compile


class EagerRecorder(Recorder):
    name = "eager"  # shape-flexible on CPU: short tile batches run short


class TiledStep(Backend):
    """The per-image reference: every gradient assembled by ``tiled_gradient`` on one image alone."""

    name = "tiled-reference"

    def __init__(self, inner: Backend, cfg) -> None:
        super().__init__()
        self.inner, self.cfg = inner, cfg

    def step(self, x):
        assert x.shape[0] == 1
        if max(x.shape[-2:]) <= window_side(self.cfg.tile, self.cfg.tile_overlap):
            return self.inner.step(x)
        return None, tiled_gradient(self.inner.step, x, self.cfg.tile, self.cfg.tile_overlap, self.cfg.batch_size)


@pytest.mark.parametrize("kind", [Recorder, EagerRecorder])
def test_scheduler_equals_each_image_tiled_alone(kind, tmp_path, monkeypatch, fast_overrides):
    """fp64: tiles of several images sharing batches (short batches zero-filled, or run short) change nothing."""
    assert tiled_mod.pads_short_batches(Recorder(None)) and not tiled_mod.pads_short_batches(EagerRecorder(None))
    cfg = make_config(overrides=dict(fast_overrides, layer="inception3a", precision="fp64", tile=64, tile_overlap=16,
                                     max_side=0, octaves=2, batch_size=3, jitter=8))
    sizes = [(200, 150), (120, 290)]
    items = [WorkItem(str(_write(tmp_path / f"{i}.png", h, w, i)), f"{i}.png", str(tmp_path / f"o{i}.png"), (h, w))
             for i, (h, w) in enumerate(sizes)]
    runner = DreamRunner(cfg, create_backend)
    inner, runner.backend = runner.backend, (rec := kind(runner.backend))
    saved = _capture(monkeypatch)
    sched = TileScheduler(runner, lambda r: None)
    sched.run(items)
    side = window_side(64, 16)
    tiles = [n for n, h, w in rec.seen if (h, w) == (side, side)]  # every octave of these sizes is tiled
    assert len(tiles) == len(rec.seen) == sched.tile_batches and sched.tile_slots_filled > sched.tile_batches
    if kind is Recorder:
        assert set(tiles) == {3}  # one shape: short batches zero-filled
    else:
        assert min(tiles) < 3 and max(tiles) == 3 and sum(tiles) == sched.tile_slots_filled
    for item in items:
        x = runner.load_input(item).pixels[None].to(torch.float64)  # the scheduler's own input, bit for bit
        ref = dream_tensor(TiledStep(inner, cfg), x, cfg, runner.dm.spec, [item.rel])
        assert np.array_equal(saved[item.output], _to_uint8(ref))


class SmallMemory(Recorder):
    """Runs out of memory on any batch of more than ``limit`` tiles, as a device would (fixed-shape: zero-filled)."""

    limit = 2

    def step(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"simulated: {x.shape[0]} tiles do not fit")
        return super().step(x)


class SmallMemoryShort(SmallMemory):
    name = "eager"  # shape-flexible on CPU: short batches run short


@pytest.mark.parametrize("small,normal", [(SmallMemoryShort, EagerRecorder), (SmallMemory, Recorder)])
def test_out_of_memory_halves_the_tile_batch_and_loses_nothing(small, normal, tmp_path, monkeypatch, fast_overrides,
                                                               caplog):
    """fp64: a job whose tile batches of 4 do not fit ends as the same job run with tile batches of 2."""
    sizes = [(200, 150), (120, 290), (200, 150)]
    items = [WorkItem(str(_write(tmp_path / f"{i}.png", h, w, i)), f"{i}.png", str(tmp_path / f"o{i}.png"), (h, w))
             for i, (h, w) in enumerate(sizes)]
    outs = []
    for batch, kind in ((4, small), (2, normal)):
        cfg = make_config(overrides=dict(fast_overrides, layer="inception3a", precision="fp64", tile=64,
                                         tile_overlap=16, max_side=0, octaves=2, batch_size=batch))
        runner = DreamRunner(cfg, create_backend)
        runner.backend = rec = kind(runner.backend)
        saved, records = _capture(monkeypatch), []
        sched = TileScheduler(runner, records.append)
        sched.run(items)
        assert [r.status for r in records] == ["done"] * 3
        assert max(n for n, _, _ in rec.seen) == 2 and sched.batch == 2
        outs.append([saved[i.output] for i in items])
    assert "tile batch of 4 ran out of memory" in caplog.text
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiled_job_on_cuda_matches_cpu(tmp_path, fast_overrides):
    """The tiled path on CUDA (zero-filled S x S batches, side-stream downloads, deferred fence waits) vs CPU."""
    src = tmp_path / "in"
    src.mkdir()
    for i, (h, w) in enumerate([(180, 250), (120, 290), (64, 64)]):
        _write(src / f"{i}.png", h, w, i)
    outs = {}
    for device in ("cpu", "cuda"):
        cfg = make_config(overrides=dict(fast_overrides, tile=64, tile_overlap=16, max_side=0, snap=1, batch_size=3,
                                         device=device))
        report = run_job(cfg, [str(src)], tmp_path / device, create_backend, progress=False)
        assert report.counts()["done"] == 3
        outs[device] = {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in (tmp_path / device).glob("*.png")
                        if not p.name.startswith("dreamfleet")}
    for name, arr in outs["cpu"].items():
        diff = np.abs(arr - outs["cuda"][name])
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4, name  # fp32 cuDNN vs CPU kernels, 4 steps


class FenceLog(EagerRecorder):
    """Counts steps; each fence remembers how many steps were queued when it was taken and when it was waited on."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.waits: list[tuple[int, int]] = []  # (steps when taken, steps when waited)
        self.interrupt_after_first_fence = False
        self._armed = False

    def step(self, x):
        if self._armed:
            raise KeyboardInterrupt("stopped mid job")
        return super().step(x)

    def fence(self):
        taken = len(self.seen)
        self._armed = self.interrupt_after_first_fence
        return Fence(lambda: self.waits.append((taken, len(self.seen))))


def _three_items(tmp_path):
    sizes = [(100, 100), (200, 150), (120, 290)]
    return [WorkItem(str(_write(tmp_path / f"{i}.png", h, w, i)), f"{i}.png", str(tmp_path / f"o{i}.png"), (h, w))
            for i, (h, w) in enumerate(sizes)]


def test_finished_images_are_waited_for_after_the_next_round_is_queued(tmp_path, monkeypatch, fast_overrides):
    cfg = make_config(overrides=dict(fast_overrides, tile=64, tile_overlap=16, max_side=0, batch_size=3))
    runner = DreamRunner(cfg, create_backend)
    runner.backend = rec = FenceLog(runner.backend)
    saved, records = _capture(monkeypatch), []
    TileScheduler(runner, records.append).run(_three_items(tmp_path))
    assert sorted(r.status for r in records) == ["done"] * 3 and len(saved) == 3
    in_loop = [(taken, waited) for taken, waited in rec.waits if waited < len(rec.seen)]  # not the final drain
    assert in_loop and all(waited > taken for taken, waited in in_loop)  # the device had new work queued


def test_a_job_stopped_mid_way_still_writes_and_records_what_finished(tmp_path, monkeypatch, fast_overrides):
    cfg = make_config(overrides=dict(fast_overrides, tile=64, tile_overlap=16, max_side=0, batch_size=3))
    runner = DreamRunner(cfg, create_backend)
    runner.backend = rec = FenceLog(runner.backend)
    rec.interrupt_after_first_fence = True  # the first image finishes, the next step raises
    saved, records = _capture(monkeypatch), []
    with pytest.raises(KeyboardInterrupt):
        TileScheduler(runner, records.append).run(_three_items(tmp_path))
    assert [r.status for r in records] == ["done"] and list(saved) == [records[0].output]


def test_an_unreadable_image_reaching_the_scheduler_fails_alone(tmp_path, monkeypatch, fast_overrides):
    cfg = make_config(overrides=dict(fast_overrides, tile=64, tile_overlap=16, max_side=0, batch_size=3))
    runner = DreamRunner(cfg, create_backend)
    items = _three_items(tmp_path)
    Path(items[1].path).write_bytes(Path(items[1].path).read_bytes()[:200])  # truncated after planning
    saved, records = _capture(monkeypatch), []
    TileScheduler(runner, records.append).run(items)
    status = {r.rel: r.status for r in records}
    assert status == {"0.png": "done", "1.png": "failed", "2.png": "done"} and len(saved) == 2
    assert "1.png" in [r.rel for r in records if r.reason]
