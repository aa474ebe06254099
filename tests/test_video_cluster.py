"""Videos in ``dreamfleet run``: each video is one unit of work on one actor, beside images, on real Ray.

The cluster's dreamed frames equal the in-process job's exactly (fp64), every input gets one record, a video's
record carries its facts, and a rerun skips everything (tiny clips, random weights)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import ray_fixtures
from ray_fixtures import make_images

pytest.importorskip("av")
pytest.importorskip("cv2")

from video_fixtures import NTSC, pan_frames, write_clip  # noqa: E402

from dreamfleet.backends import create_backend  # noqa: E402
from dreamfleet.cluster.driver import ClusterOptions, run_cluster_job  # noqa: E402
from dreamfleet.engine.config import make_config  # noqa: E402
from dreamfleet.engine.job import run_job  # noqa: E402
from dreamfleet.engine.video.scheduler import state_root  # noqa: E402
from dreamfleet.engine.video.store import FrameStore  # noqa: E402

pytestmark = pytest.mark.ray
ray_cluster = ray_fixtures.ray_cluster  # the session's two-node cluster

SIZE = (64, 48)  # W, H: the working size as is (max_side 64, snap 16)


def _inputs(folder: Path) -> list[str]:
    make_images(folder, 3)
    for i, (n, name) in enumerate([(4, "coffee.png"), (3, "chelsea.png")]):
        write_clip(folder / f"clip{i}.mp4", pan_frames(n, SIZE, 1 + i, name), [1001 * t for t in range(n)],
                   Fraction(1, 30000), NTSC)
    return [str(folder)]


def _frames(out: Path, cfg, rel: str) -> list[np.ndarray]:
    store = FrameStore(state_root(out, cfg.param_hash(), rel))
    return [store.read(f[-1]) for f in store.frames()]


@pytest.mark.timeout(300)
def test_run_dreams_videos_whole_on_actors_like_the_local_job(ray_cluster, tmp_path):
    cfg = make_config(overrides=dict(random_weights=True, layer="inception3b", octaves=1, iterations=1, max_side=64,
                                     snap=16, jitter=4, precision="fp64", batch_size=2, keep_frames=True))
    inputs = _inputs(tmp_path / "in")
    res = run_cluster_job(cfg, inputs, tmp_path / "out", create_backend, ClusterOptions(workers=2, gpus_per_worker=0))
    assert res.exit_code == 0
    recs = {r.rel: r for r in res.report.records}
    assert sorted(recs) == ["clip0.mp4", "clip1.mp4", "img00.png", "img01.png", "img02.png"]
    assert all(r.status == "done" for r in recs.values())
    for rel, n in (("clip0.mp4", 4), ("clip1.mp4", 3)):
        assert recs[rel].video["frames"] == n and recs[rel].worker  # one record, from the one actor that ran it
        assert (tmp_path / "out" / rel).stat().st_size > 0

    local = run_job(cfg, inputs, tmp_path / "local", create_backend, progress=False)
    assert local.counts()["done"] == 5
    for rel in ("clip0.mp4", "clip1.mp4"):  # the chain ran on one actor, in order: the same frames, bit for bit
        a, b = _frames(tmp_path / "out", cfg, rel), _frames(tmp_path / "local", cfg, rel)
        assert len(a) == len(b) > 0 and all(np.array_equal(x, y) for x, y in zip(a, b))

    again = run_cluster_job(cfg, inputs, tmp_path / "out", create_backend, ClusterOptions(workers=2, gpus_per_worker=0))
    assert again.exit_code == 0 and again.report.counts()["skipped"] == 5
