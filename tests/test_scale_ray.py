"""Issue 18 in `run`: a full output disk stops the driver's dispatch; the rerun after freeing space finishes."""
from __future__ import annotations

import os

import pytest
import ray_fixtures
from test_scale import TINY, _images
from test_scale_io import small_fs  # noqa: F401  (fixture)

from dreamfleet.backends import create_backend
from dreamfleet.cluster.driver import ClusterOptions, run_cluster_job
from dreamfleet.engine.config import make_config

ray_cluster = ray_fixtures.ray_cluster  # the session's two-node cluster


@pytest.mark.timeout(300)
def test_run_stops_dispatching_on_a_full_disk(ray_cluster, tmp_path, small_fs):  # noqa: F811
    src, out = _images(tmp_path / "in", 40, side=64, noise=True), small_fs / "out"
    out.mkdir()
    st = os.statvfs(small_fs)
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 64 * 1024))  # room for the bookkeeping only
    cfg = make_config(None, None, {**TINY, "max_side": 64})
    opts = ClusterOptions(workers=1, gpus_per_worker=1, shard_size=4, contact_sheet=0)
    res = run_cluster_job(cfg, [str(src)], out, create_backend, opts)
    stopped = res.report.extra["stopped"]
    written = len(list(out.glob("*.png")))
    failed_writes = 40 - written - stopped["not_attempted"]
    print(f"run full disk: {written} written, {failed_writes} failed writes, {stopped['not_attempted']} not attempted")
    assert res.exit_code == 1 and stopped["cause"] == "disk_full" and res.reconciliation["ok"]
    assert stopped["message"].startswith("the output disk is full: ")
    assert 3 <= failed_writes <= 2 * 4  # at most two batches' worth (batch size 4)
    filler.unlink()  # space freed
    again = run_cluster_job(cfg, [str(src)], out, create_backend, opts)
    assert again.exit_code == 0 and again.report.counts() == {"done": 40 - written, "skipped": written, "failed": 0}
