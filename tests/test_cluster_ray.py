"""Cluster mode on a real local two-node Ray cluster: pinning, jobs, and every fault the issue lists."""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray_fixtures
from ray_fixtures import make_images, tiny_config

from dreamfleet.backends import create_backend
from dreamfleet.cluster import testing
from dreamfleet.cluster.driver import ClusterOptions, run_cluster_job
from dreamfleet.engine.atomic import TMP_SUFFIX

pytestmark = pytest.mark.ray
ray_cluster = ray_fixtures.ray_cluster  # the session's two-node cluster


def _outputs(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in out.glob("img*.png")}


def _check_complete(out: Path, n: int, report) -> None:
    assert len(_outputs(out)) == n
    assert not list(out.rglob(f"*{TMP_SUFFIX}"))
    rels = [r.rel for r in report.records]
    assert len(rels) == len(set(rels)) == n  # one final record per image


@pytest.mark.timeout(120)
def test_gpu_pinning_across_two_nodes(ray_cluster, tmp_path):
    make_images(tmp_path / "in", 6)
    opts = ClusterOptions(workers=3, gpus_per_worker=1, retries=0, shard_size=1)
    res = run_cluster_job(tiny_config(), [str(tmp_path / "in")], tmp_path / "out", create_backend, opts)
    assert res.exit_code == 0
    workers = res.report.extra["workers"]
    assert len(workers) == 3 and res.report.extra["cluster"]["nodes"] == 2
    by_node: dict[str, list[str]] = {}
    for w in workers.values():
        assert len(w["gpu_ids"]) == 1 and w["cuda_visible_devices"] == w["gpu_ids"][0]  # Ray pinned one GPU
        by_node.setdefault(w["node_id"], []).append(w["gpu_ids"][0])
    assert len(by_node) == 2  # the second node got an actor
    assert all(len(ids) == len(set(ids)) for ids in by_node.values())  # no GPU handed out twice on a node


@pytest.mark.timeout(120)
def test_job_end_to_end_then_rerun_skips(ray_cluster, tmp_path):
    make_images(tmp_path / "in", 8)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG garbage")
    cfg, out = tiny_config(), tmp_path / "out"
    opts = ClusterOptions(workers=2, gpus_per_worker=0.5)  # fractional GPUs: both may share one
    res = run_cluster_job(cfg, [str(tmp_path / "in")], out, create_backend, opts)
    extra = res.report.extra
    assert res.report.counts() == {"done": 8, "skipped": 0, "failed": 1} and res.exit_code == 1
    assert extra["reconciliation"]["ok"] and extra["reconciliation"]["manifest_entries"] == 9
    assert sum(w["done"] for w in extra["workers"].values()) == 8
    assert all(w["images_per_s"] > 0 and len(w["gpu_ids"]) == 1 for w in extra["workers"].values())
    assert extra["cluster"]["resources"]["GPU"] == 3 and extra["quarantined"] == []
    assert Path(extra["contact_sheet"]).exists()
    saved = json.loads((out / "dreamfleet-report.json").read_text())
    assert saved["command"] == "run" and "workers" in saved and "reconciliation" in saved
    again = run_cluster_job(cfg, [str(tmp_path / "in")], out, create_backend, opts)
    assert again.report.counts() == {"done": 0, "skipped": 8, "failed": 1} and again.reconciliation["ok"]


@pytest.mark.timeout(120)
def test_worker_killed_mid_shard_recovers(ray_cluster, tmp_path):
    make_images(tmp_path / "in", 8)
    out, marker = tmp_path / "out", tmp_path / "died.json"
    factory = functools.partial(testing.dying_backend, marker=str(marker), out_dir=str(out), after_steps=2)
    opts = ClusterOptions(workers=1, shard_size=4, retries=1)
    res = run_cluster_job(tiny_config(), [str(tmp_path / "in")], out, factory, opts)
    assert marker.exists() and res.report.extra["worker_restarts"] == 1
    assert res.exit_code == 0 and res.report.counts()["done"] == 8
    _check_complete(out, 8, res.report)
    before = json.loads(marker.read_text())["written"]
    assert before, "the worker should have written a batch before dying"
    now = {str(out / k): v for k, v in _outputs(out).items()}
    assert all(now[p] == ino for p, ino in before.items())  # written exactly once: never rewritten


@pytest.mark.timeout(120)
def test_hung_worker_is_killed_and_its_shard_redone(ray_cluster, tmp_path):
    make_images(tmp_path / "in", 4)
    out, marker = tmp_path / "out", tmp_path / "hung"
    factory = functools.partial(testing.hanging_backend, marker=str(marker))
    opts = ClusterOptions(workers=1, shard_size=2, retries=1, shard_timeout=5)
    res = run_cluster_job(tiny_config(), [str(tmp_path / "in")], out, factory, opts)
    assert marker.exists() and res.report.extra["worker_restarts"] == 1
    assert res.exit_code == 0
    _check_complete(out, 4, res.report)


@pytest.mark.timeout(120)
def test_poison_image_quarantined_rest_completes(ray_cluster, tmp_path):
    make_images(tmp_path / "in", 6, poison={4})
    out = tmp_path / "out"
    opts = ClusterOptions(workers=1, shard_size=6, retries=1)
    res = run_cluster_job(tiny_config(), [str(tmp_path / "in")], out, testing.poison_backend, opts)
    extra = res.report.extra
    assert res.report.counts() == {"done": 5, "skipped": 0, "failed": 1} and res.exit_code == 1
    (q,) = extra["quarantined"]
    assert q["rel"] == "img04.png" and q["attempts"] == 2 and "poison image crashed the model" in q["reason"]
    failed = [r for r in res.report.records if r.status == "failed"][0]
    assert failed.reason.startswith("quarantined after 2 failed attempts") and failed.attempts == 2
    assert extra["reconciliation"]["ok"] and extra["worker_restarts"] == 0


@pytest.mark.timeout(150)
def test_crashing_poison_splits_shard_and_is_quarantined(ray_cluster, tmp_path):
    make_images(tmp_path / "in", 4, poison={1})  # one shape bucket: one shard of 4, split 2 + 2, then 1 + 1
    out = tmp_path / "out"
    factory = functools.partial(testing.poison_backend, crash=True)
    opts = ClusterOptions(workers=1, shard_size=4, retries=1)
    res = run_cluster_job(tiny_config(batch_size=4), [str(tmp_path / "in")], out, factory, opts)
    extra = res.report.extra
    assert res.report.counts() == {"done": 3, "skipped": 0, "failed": 1}
    assert [(q["rel"], q["attempts"]) for q in extra["quarantined"]] == [("img01.png", 3)]
    assert extra["worker_restarts"] == 2 and extra["reconciliation"]["ok"]  # none started once work ran out
    assert not list(out.rglob(f"*{TMP_SUFFIX}"))


@pytest.mark.timeout(150)
def test_driver_killed_rerun_writes_only_missing(ray_cluster, tmp_path):
    n = 24
    make_images(tmp_path / "in", n)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dreamfleet.cli", "run", str(tmp_path / "in"), "-o", str(out), "--address",
           ray_cluster, "--workers", "1", "--shard-size", "1", "--model", "googlenet", "--random-weights",
           "--max-side", "64", "--iterations", "2", "--octaves", "2", "--batch-size", "1", "--no-progress"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 90
        while len(_outputs(out)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    settled, last = time.time(), -1
    while time.time() - settled < 2.0:  # wait for the dead driver's actor to be reaped by Ray
        if len(_outputs(out)) != last:
            last, settled = len(_outputs(out)), time.time()
        time.sleep(0.1)
    before = _outputs(out)
    assert 2 <= len(before) < n, f"driver should die mid-job, {len(before)} of {n} written"
    (out / f".img00.png.deadbeef{TMP_SUFFIX}").write_bytes(b"half")  # what a kill mid-write leaves
    res = run_cluster_job(tiny_config(iterations=2), [str(tmp_path / "in")], out, create_backend,
                          ClusterOptions(workers=1))
    counts = res.report.counts()
    assert counts == {"done": n - len(before), "skipped": len(before), "failed": 0}, counts
    assert res.report.extra["stale_temporaries_removed"] >= 1 and res.exit_code == 0
    _check_complete(out, n, res.report)
    after = _outputs(out)
    assert all(after[k] == ino for k, ino in before.items())  # nothing written twice
