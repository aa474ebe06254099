"""``dreamfleet run`` with inputs and outputs on S3 (moto server), no shared disk: workers read and write directly.

A worker is killed mid-run; every decodable input must still be written exactly once
(the bucket is versioned: one version per output key), the broken object recorded as
failed, the report / manifest / contact sheet land in the bucket, and a rerun skips all.
"""
from __future__ import annotations

import functools
import io
import json

import numpy as np
import pytest
import ray_fixtures
import s3_fixtures
from PIL import Image
from ray_fixtures import tiny_config

from dreamfleet.cli import main
from dreamfleet.cluster import testing
from dreamfleet.cluster.driver import ClusterOptions, run_cluster_job
from dreamfleet.engine.atomic import TMP_SUFFIX

pytestmark = pytest.mark.ray
ray_cluster = ray_fixtures.ray_cluster
s3, s3_endpoint = s3_fixtures.s3, s3_fixtures.s3_endpoint


def _upload(s3, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    keys = []
    for i in range(n):
        arr = rng.integers(0, 255, (48 if i % 3 == 0 else 64, 64, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        s3.put(f"in/img{i:02d}.png", buf.getvalue())
        keys.append(f"img{i:02d}.png")
    s3.put("in/broken.png", b"\x89PNG garbage")
    return keys


@pytest.mark.timeout(180)
def test_run_on_s3_with_a_killed_worker_then_rerun_skips(ray_cluster, s3, tmp_path, capsys):
    keys = _upload(s3, 10)
    marker = tmp_path / "died.json"
    cfg = tiny_config(storage_options=s3.storage_options)  # the workers' own environment knows no endpoint
    factory = functools.partial(testing.dying_backend, marker=str(marker), out_dir=s3.url("out2"),
                                after_steps=2)
    opts = ClusterOptions(workers=2, shard_size=4, retries=1)  # dies in its first shard's second batch
    res = run_cluster_job(cfg, [s3.url("in")], s3.url("out2"), factory, opts)
    extra = res.report.extra
    assert marker.exists() and extra["worker_restarts"] == 1  # one worker died mid-shard and was replaced
    assert res.report.counts() == {"done": len(keys), "skipped": 0, "failed": 1} and res.exit_code == 1
    # outputs written before the death are kept, not redone: checked below as one version per output key
    # (whether the death falls in a shard with writes of its own depends on the writer threads' timing)
    assert extra["reconciliation"]["ok"] and extra["reconciliation"]["manifest_entries"] == len(keys) + 1
    versions = s3.versions("out2/")
    assert {k: versions.get(f"out2/{k}") for k in keys} == {k: 1 for k in keys}  # each written exactly once
    listed = s3.keys("out2/")
    assert not [k for k in listed if k.endswith(TMP_SUFFIX)] and not s3.open_uploads()
    assert "out2/.dreamfleet/lock" not in listed  # lease released
    assert {"out2/dreamfleet-report.json", "out2/dreamfleet-contact-sheet.png", "out2/.dreamfleet/manifest.jsonl",
            "out2/.dreamfleet/job.json"} <= set(listed)
    manifest = [json.loads(line) for line in s3.get("out2/.dreamfleet/manifest.jsonl").splitlines()[1:]]
    assert all(e["content_hash"].startswith("etag:") for e in manifest)  # hashed from the listing, not downloaded
    assert json.loads(s3.get("out2/dreamfleet-report.json"))["command"] == "run"

    # the rerun through the CLI and a job file whose [storage] table carries the endpoint: everything skipped
    opts = s3.storage_options
    job = tmp_path / "job.toml"
    job.write_text(f'inputs = ["{s3.url("in")}"]\noutput = "{s3.url("out2")}"\nmodel = "googlenet"\n'
                   'random-weights = true\nmax-side = 64\niterations = 1\noctaves = 2\nbatch-size = 2\n'
                   f'[storage]\nkey = "{opts["key"]}"\nsecret = "{opts["secret"]}"\n'
                   f'endpoint_url = "{opts["endpoint_url"]}"\n')
    assert main(["run", str(job), "--address", ray_cluster, "--workers", "2", "--no-progress"]) == 1
    assert f"report: {s3.url('out2')}/dreamfleet-report.json" in capsys.readouterr().out
    again = json.loads(s3.get("out2/dreamfleet-report.json"))
    assert again["totals"]["skipped"] == len(keys) and again["totals"]["done"] == 0
    assert again["reconciliation"]["ok"] and again["config"]["storage_options"]["secret"] == "***"
    after = s3.versions("out2/")
    assert all(after[f"out2/{k}"] == 1 for k in keys)  # the rerun wrote no output again
