"""Every Ray actor, a recreated one included, runs prepare(plan.shapes) before its first shard."""
from __future__ import annotations

import functools
import json

import pytest
import ray_fixtures
from ray_fixtures import make_images, tiny_config

from dreamfleet.cluster import testing
from dreamfleet.cluster.driver import ClusterOptions, run_cluster_job
from dreamfleet.engine.backends.compiled import recompile_budget
from dreamfleet.engine.job import plan_job

pytestmark = pytest.mark.ray
ray_cluster = ray_fixtures.ray_cluster  # the session's two-node cluster


@pytest.mark.timeout(150)
def test_every_actor_prepared_before_its_first_shard_even_recreated(ray_cluster, tmp_path):
    make_images(tmp_path / "in", 8)
    out, records = tmp_path / "out", tmp_path / "prepared"
    records.mkdir()
    cfg = tiny_config()
    shapes = [list(s) for s in plan_job(cfg, [str(tmp_path / "in")], out).shapes]
    factory = functools.partial(testing.prepare_checking_backend, record_dir=str(records),
                                die_marker=str(tmp_path / "died"), die_after=2)
    opts = ClusterOptions(workers=1, shard_size=4, retries=1)
    res = run_cluster_job(cfg, [str(tmp_path / "in")], out, factory, opts)
    assert (tmp_path / "died").exists() and res.report.extra["worker_restarts"] == 1  # one actor was recreated
    assert res.exit_code == 0 and res.report.counts()["done"] == 8  # no "step() before prepare" failure
    prepared = [json.loads(p.read_text()) for p in records.glob("prepare-*.json")]
    assert len(prepared) == 2 and all(p["shapes"] == shapes for p in prepared)  # both actors, the job's shapes
    assert all("prepare_seconds" in w for w in res.report.extra["workers"].values())


def test_recompile_budget_covers_split_and_remainder_batches():
    shapes = [(8, 64, 64), (8, 45, 45), (3, 64, 96), (3, 45, 68)]
    # every N in 1..8 at each of the 4 sizes, plus headroom
    assert recompile_budget(shapes) >= 4 * 8
    assert recompile_budget([]) >= 1
