"""Tiled dreaming (issue 10) in ``dreamfleet run``: the Ray actor pool, where a shard is still a list of images.

Owns the cluster side of tiling on the session's real two-node Ray cluster: a tiled ``run`` job
writes every image at full size and equals the single-process ``dream`` of the same config, and
a worker killed in the middle of a tiled shard loses and repeats nothing. The tile grid, the
scheduler and the in-process tiled job are covered by ``test_tiling.py``.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import ray_fixtures
import torch
from PIL import Image
from ray_fixtures import tiny_config

from dreamfleet.backends import create_backend
from dreamfleet.cluster import testing
from dreamfleet.cluster.driver import ClusterOptions, run_cluster_job
from dreamfleet.engine.atomic import TMP_SUFFIX
from dreamfleet.engine.job import run_job
from dreamfleet.engine.octaves import octave_sizes
from dreamfleet.engine.report import read_records
from dreamfleet.engine.tiling import needs_tiling

pytestmark = pytest.mark.ray
ray_cluster = ray_fixtures.ray_cluster  # the session's two-node cluster

TILE, OVERLAP = 64, 16  # windows of 96 x 96 px


@pytest.fixture
def one_torch_thread():
    """The in-process dream on one torch thread, as each Ray worker runs (``ClusterOptions.torch_threads``).

    Also keeps it off two spinning OpenMP threads on a shared 2-core machine: measured 1-2 s on one thread,
    up to 63 s on two while other jobs held the cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiled_config(**kw):
    """The tiny random-init model, tiled, at the input's own size (max_side 0, snap 1: no resize at all)."""
    values = dict(tile=TILE, tile_overlap=OVERLAP, max_side=0, snap=1, jitter=8, octaves=2, batch_size=2)
    values.update(kw)
    return tiny_config(**values)


def _write_noise(path: Path, h: int, w: int, seed: int) -> None:
    """Pixel noise: no flat areas, so no exact max-pool ties for rounding to route differently."""
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _make_folder(folder: Path, sizes: dict[str, tuple[int, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (name, (h, w)) in enumerate(sorted(sizes.items())):
        _write_noise(folder / name, h, w, seed)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int16)  # [H,W,3]


def _max_diff(a: Path, b: Path) -> int:
    return int(np.abs(_pixels(a) - _pixels(b)).max())


def _outputs(out: Path) -> dict[str, int]:
    """Dream name -> inode of every finished output (no report, sheet or temporary)."""
    return {p.name: p.stat().st_ino for p in out.glob("*.png") if "dreamfleet" not in p.name}


def _check_complete(out: Path, n: int, report) -> None:
    assert len(_outputs(out)) == n
    assert not list(out.rglob(f"*{TMP_SUFFIX}"))
    rels = [r.rel for r in report.records]
    assert len(rels) == len(set(rels)) == n  # one final record per image


def _tiled_in_every_octave(h: int, w: int, cfg) -> bool:
    return all(needs_tiling(oh, ow, cfg.tile, cfg.tile_overlap) for oh, ow in octave_sizes(h, w, cfg.octaves,
                                                                                          cfg.octave_scale))


@pytest.mark.timeout(180)
def test_tiled_run_job_equals_the_single_process_dream(ray_cluster, tmp_path, one_torch_thread):
    # fp64: the two paths batch tiles differently (the cluster shards by shape: a + b share tile batches on one
    # worker, c runs alone on the other; in process a, b and c share one scheduler), and in fp32 last-bit
    # differences of other batch groupings or thread counts grow through ReLU switch points into 1-2 levels
    # within these 4 steps (measured). In fp64 they stay ~1e-15, so the written 8-bit dreams must be identical.
    cfg = _tiled_config(precision="fp64", iterations=2)
    large = {"a.png": (150, 200), "b.png": (150, 200), "c.png": (96, 260)}
    src = tmp_path / "in"
    _make_folder(src, {**large, "small.png": (64, 80)})
    (src / "broken.png").write_bytes(b"\x89PNG garbage")
    assert all(_tiled_in_every_octave(h, w, cfg) for h, w in large.values())

    opts = ClusterOptions(workers=2, gpus_per_worker=0, shard_size=2, contact_sheet=0)
    res = run_cluster_job(cfg, [str(src)], tmp_path / "run", create_backend, opts)
    extra = res.report.extra
    assert res.report.counts() == {"done": 4, "skipped": 0, "failed": 1} and res.exit_code == 1
    assert extra["reconciliation"]["ok"] and extra["reconciliation"]["manifest_entries"] == 5
    assert extra["cluster"]["shards"] == 3 and extra["worker_restarts"] == 0 and extra["quarantined"] == []
    rows = {r["rel"]: r for r in read_records(tmp_path / "run")}
    assert rows["broken.png"]["status"] == "failed" and rows["broken.png"]["reason"]
    for name, (h, w) in {**large, "small.png": (64, 80)}.items():
        assert rows[name]["status"] == "done"
        assert Image.open(tmp_path / "run" / name).size == (w, h)  # full input size

    dream = run_job(cfg, [str(src)], tmp_path / "dream", create_backend, progress=False)
    assert dream.counts() == res.report.counts()
    for name in [*large, "small.png"]:
        assert _max_diff(tmp_path / "run" / name, tmp_path / "dream" / name) == 0, name

    # ... and the equality is the tiled dream's: untiled, the large images come out visibly different
    run_job(_tiled_config(precision="fp64", iterations=2, tile=0), [str(src)], tmp_path / "untiled",
            create_backend, progress=False)
    assert all(_max_diff(tmp_path / "run" / name, tmp_path / "untiled" / name) > 2 for name in large)
    assert _max_diff(tmp_path / "run" / "small.png", tmp_path / "untiled" / "small.png") == 0  # within one window


@pytest.mark.timeout(180)
def test_worker_killed_mid_tiled_shard_recovers(ray_cluster, tmp_path):
    # one shard of four same-shape images, each tiled in both octaves: every step of the shard is a tile batch,
    # and the scheduler's FIFO has the next image's tiles in flight when the first image is written, so the
    # worker dies between tile batches of a half-assembled gradient
    n, (h, w) = 4, (96, 260)
    cfg = _tiled_config(iterations=1)
    assert _tiled_in_every_octave(h, w, cfg)
    src, out, marker = tmp_path / "in", tmp_path / "out", tmp_path / "died.json"
    _make_folder(src, {f"img{i:02d}.png": (h, w) for i in range(n)})
    factory = functools.partial(testing.dying_backend, marker=str(marker), out_dir=str(out), after_steps=2)
    opts = ClusterOptions(workers=1, gpus_per_worker=0, shard_size=n, retries=1, contact_sheet=0)
    res = run_cluster_job(cfg, [str(src)], out, factory, opts)
    assert marker.exists() and res.report.extra["worker_restarts"] == 1
    assert res.exit_code == 0 and res.report.counts() == {"done": n, "skipped": 0, "failed": 0}
    _check_complete(out, n, res.report)
    before = {Path(p).name: ino for p, ino in json.loads(marker.read_text())["written"].items()}
    assert 0 < len(before) < n, f"the worker should die mid-shard, {len(before)} of {n} written"
    now = _outputs(out)
    assert all(now[name] == ino for name, ino in before.items())  # written exactly once: never rewritten
    recovered = {r.rel for r in res.report.records if r.worker == "recovered"}
    assert recovered == set(before)  # kept from the dead worker; the rest dreamed again, once
    assert all(Image.open(out / name).size == (w, h) for name in now)
