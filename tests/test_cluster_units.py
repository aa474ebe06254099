"""Cluster mode pieces that need no Ray: manifest, shards, reconciliation, options, CLI, lock, sheet."""
from __future__ import annotations

import argparse
import io
import json
import logging

import pytest
from ray_fixtures import make_images, tiny_config

from dreamfleet.cluster.commands import add_parser, resolve_job
from dreamfleet.cluster.contact_sheet import make_contact_sheet
from dreamfleet.cluster.driver import ClusterOptions, ClusterResult, resolve_pool_options, run_cluster_job
from dreamfleet.cluster.manifest import (
    Reconciler,
    auto_shard_size,
    build_manifest,
    make_shards,
    manifest_path,
    read_manifest,
)
from dreamfleet.cluster.progress import Progress
from dreamfleet.engine.job import JobLocked, OutputLock, plan_job
from dreamfleet.engine.report import ImageRecord, RunReport
from dreamfleet.engine.runner import WorkItem


def _item(i, hw):
    return WorkItem(f"in/{i}.png", f"{i}.png", f"out/{i}.png", hw)


def test_shards_stay_in_one_shape_bucket():
    todo = [_item(i, (64, 64) if i % 2 else (32, 64)) for i in range(7)]
    shards = make_shards(todo, 2)
    assert sum(len(s) for s in shards) == 7
    assert all(len({s_.hw for s_ in s}) == 1 and len(s) <= 2 for s in shards)
    assert [s[0].hw for s in shards] == sorted(s[0].hw for s in shards)
    with pytest.raises(ValueError, match=">= 1"):
        make_shards(todo, 0)
    assert auto_shard_size(1000, 2, 8) == 16 and auto_shard_size(8, 2, 8) == 2 and auto_shard_size(1, 4, 8) == 1


def test_manifest_hashes_and_reconciliation(tmp_path):
    make_images(tmp_path / "in", 5)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    cfg, out = tiny_config(), tmp_path / "out"
    plan = plan_job(cfg, [str(tmp_path / "in")], out)
    assert build_manifest(plan, out, cfg.param_hash()) == 6
    lines = manifest_path(out).read_text().splitlines()
    assert json.loads(lines[0])["param_hash"] == cfg.param_hash() and len(lines) == 7
    entries = list(read_manifest(out))
    assert {e.planned for e in entries} == {"todo", "failed"}
    assert all(e.content_hash and len(e.content_hash) == 32 for e in entries)
    assert build_manifest(plan, out, cfg.param_hash()) == 6  # reuses the hashes (same size + mtime)
    assert [e.content_hash for e in read_manifest(out)] == [e.content_hash for e in entries]
    assert not list(out.rglob("*.dreamfleet-tmp"))

    recon = Reconciler()
    for rec in plan.records:
        recon.add(rec)
    for item in plan.todo[:-1]:
        (out / item.rel).parent.mkdir(parents=True, exist_ok=True)
        (out / item.rel).write_bytes(b"x")
        recon.add(ImageRecord(item.path, item.rel, "done", output=item.output))  # no stamp: looked at on disk
    report = RunReport({}, out)
    for rec in plan.records:
        report.add(rec)
    for item in plan.todo[:-1]:
        report.add(ImageRecord(item.path, item.rel, "done", output=item.output))
    result = recon.result(6, out, report.iter_records)
    assert not result["ok"] and [u["rel"] for u in result["unaccounted"]] == [plan.todo[-1].rel]
    assert result["failed"] == 1 and result["done"] == 4
    assert ClusterResult(report, result).exit_code == 1
    recon.add(ImageRecord(plan.todo[-1].path, plan.todo[-1].rel, "done", output=plan.todo[-1].output))
    assert recon.result(6)["unaccounted"][0]["why"] == "done but output missing"
    recon.missing.clear()
    assert recon.result(6)["ok"]


def test_pool_defaults_from_resources():
    assert resolve_pool_options(ClusterOptions(), {"CPU": 2}).workers == 1
    assert resolve_pool_options(ClusterOptions(), {"CPU": 16}).workers == 8
    gpu = resolve_pool_options(ClusterOptions(), {"CPU": 16, "GPU": 4})
    assert (gpu.workers, gpu.gpus_per_worker) == (4, 1.0)
    assert resolve_pool_options(ClusterOptions(gpus_per_worker=0.5), {"CPU": 8, "GPU": 2}).workers == 4
    with pytest.raises(ValueError, match="valid: 0"):
        resolve_pool_options(ClusterOptions(gpus_per_worker=1), {"CPU": 2})
    with pytest.raises(ValueError, match="valid: --workers <= 2"):
        resolve_pool_options(ClusterOptions(workers=3, gpus_per_worker=1), {"CPU": 8, "GPU": 2})
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        resolve_pool_options(ClusterOptions(workers=0), {"CPU": 8})


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["run", *argv])


def test_cli_job_file(tmp_path):
    job = tmp_path / "jobs" / "night.toml"
    job.parent.mkdir()
    job.write_text('inputs = ["../photos"]\noutput = "../dreams"\nmodel = "googlenet"\nrandom-weights = true\n'
                   'iterations = 3\n')
    args = _parse([str(job), "--iterations", "1", "--workers", "2", "--retries", "1"])
    cfg, inputs, output = resolve_job(args)
    assert inputs == [str(job.parent / "../photos")] and output == str(job.parent / "../dreams")
    assert (cfg.model, cfg.random_weights, cfg.iterations) == ("googlenet", True, 1)  # flags win over the file
    assert (args.workers, args.retries, args.address, args.gpus_per_worker) == (2, 1, None, None)
    cfg, inputs, output = resolve_job(_parse(["a.png", "-o", "x", "--config", str(job)]))
    assert inputs == ["a.png"] and output == "x" and cfg.iterations == 3
    job.write_text('inputs = ["p"]\nmodel = "googlenet"\n')
    with pytest.raises(ValueError, match="no output folder"):
        resolve_job(_parse([str(job)]))
    with pytest.raises(ValueError, match="job file .* not found"):
        resolve_job(_parse([str(tmp_path / "missing.toml")]))
    job.write_text('inputs = ["p"]\noutput = "o"\nmodle = "googlenet"\n')
    with pytest.raises(ValueError, match="valid:"):
        resolve_job(_parse([str(job)]))


def test_second_run_refused_while_locked(tmp_path):
    make_images(tmp_path / "in", 2)
    with OutputLock(tmp_path / "out"):
        with pytest.raises(JobLocked, match="another dreamfleet run"):
            run_cluster_job(tiny_config(), [str(tmp_path / "in")], tmp_path / "out", None)


def test_progress_logs_without_tty(caplog):
    bar = Progress(3, enabled=False, log_every=0.0, stream=io.StringIO())
    bar.add("w0", "done")
    bar.add("w1", "failed")
    bar.retried()
    with caplog.at_level(logging.INFO, logger="dreamfleet.cluster.progress"):
        bar.tick()
    assert "2/3 images: 1 done, 1 failed, 1 retries" in caplog.text and "w0:1" in caplog.text
    tty = io.StringIO()
    bar = Progress(1, enabled=True, stream=tty)
    bar.add("w0", "done")
    bar.close()
    assert "1/1 images" in tty.getvalue() and tty.getvalue().endswith("\n")


def test_contact_sheet(tmp_path):
    from PIL import Image

    paths = make_images(tmp_path / "in", 5)
    recs = [ImageRecord(str(p), p.name, "done", output=str(p)) for p in paths]
    recs.append(ImageRecord("gone.png", "gone.png", "failed"))
    sheet = make_contact_sheet(recs, tmp_path / "sheet.png", limit=4, thumb=32, columns=2)
    with Image.open(sheet) as im:
        assert im.size == (2 * (2 * 32 + 12), 2 * (32 + 8))
    assert make_contact_sheet(recs[-1:], tmp_path / "none.png") is None
    with pytest.raises(ValueError, match="limit >= 1"):
        make_contact_sheet(recs, tmp_path / "x.png", limit=0)


def test_shard_function_runs_in_process_and_poison_is_caught(tmp_path):
    from dreamfleet.cluster.testing import poison_backend
    from dreamfleet.cluster.worker import process_shard
    from dreamfleet.engine.runner import DreamRunner

    make_images(tmp_path / "in", 4, poison={2})
    cfg, out = tiny_config(batch_size=4), tmp_path / "out"
    plan = plan_job(cfg, [str(tmp_path / "in")], out)
    runner = DreamRunner(cfg, poison_backend, worker="local")
    try:
        result = process_shard(runner, 7, plan.todo, "local")
    finally:
        runner.close()
    status = {r.rel: r.status for r in result.records}
    assert result.shard_id == 7 and result.seconds > 0
    assert status == {"img00.png": "done", "img01.png": "done", "img02.png": "failed", "img03.png": "done"}
    assert "poison image" in [r for r in result.records if r.status == "failed"][0].reason


class _FakeRay:
    """Just enough of the ray module for a pool whose only node has died."""

    def __init__(self, nodes):
        self._nodes = nodes

    def remote(self, cls):
        fake = self

        class Method:
            @staticmethod
            def remote(*a):
                return object()

        class Handle:  # actor.info.remote(), actor.prepare.remote(...), actor.process.remote(...)
            info = prepare = process = Method

        class Cls:
            @staticmethod
            def options(**kw):
                return Cls

            @staticmethod
            def remote(*a):
                return Handle()

        fake.handle = Handle
        return Cls

    def wait(self, refs, num_returns=1, timeout=None):
        return [], refs

    def nodes(self):
        return self._nodes

    def kill(self, actor, no_restart=True):
        pass


def test_pool_fails_fast_when_no_node_is_alive(monkeypatch):
    import sys

    from dreamfleet.cluster import pool as pool_mod

    monkeypatch.setitem(sys.modules, "ray", _FakeRay([{"Alive": False}]))
    monkeypatch.setattr(pool_mod, "NODE_CHECK_SECONDS", 0.0)
    pool = pool_mod.WorkerPool(tiny_config(), None, pool_mod.PoolOptions(workers=1), [(1, 64, 64)])
    with pytest.raises(pool_mod.NoLiveNode, match="no Ray node is alive.*rerun the same command to resume"):
        pool.run([[_item(0, (64, 64))]], on_record=lambda r: None)


def test_local_ray_starts_without_dashboard_unless_asked(monkeypatch):
    import sys
    import types

    from dreamfleet.cluster.driver import connect

    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: calls.append(kw))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    connect(None)
    connect(None, dashboard=True)
    assert [c["include_dashboard"] for c in calls] == [False, True]
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    assert parser.parse_args(["run", "x", "-o", "y", "--dashboard"]).dashboard is True


def test_run_without_ray_says_install_the_extra_before_anything(tmp_path, monkeypatch, capsys):
    import sys

    from dreamfleet.cli import main

    make_images(tmp_path / "in", 1)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when not installed
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "in"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'dreamfleet[cluster]'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_retry_policy_splits_then_retries_alone_then_quarantines():
    from dreamfleet.cluster.retry import RetryPolicy

    policy = RetryPolicy(retries=2)
    items = [_item(i, (32, 32)) for i in range(5)]
    halves = policy.split(items)  # a failed shard: everyone charged once, halves requeued
    assert [len(h) for h in halves] == [2, 3] and sum(halves, []) == items
    assert policy.failures == {i.rel: 1 for i in items}
    first = policy.charge("0.png")  # alone now: failure 2 of 3 allowed attempts
    second = policy.charge("0.png")
    assert (first.retry, first.failures) == (True, 2) and (second.retry, second.failures) == (False, 3)
    assert policy.attempts("1.png", succeeded=True) == 2 and policy.attempts("9.png", succeeded=True) == 1
    assert RetryPolicy(0).charge("x").retry is False
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(-1)


def test_gpu_actor_cpus_from_the_node_and_autoscaling_asks(monkeypatch):
    from dreamfleet.cluster import resources
    from dreamfleet.cluster.sizing import resolve_pool_options

    node = {"CPU": 16.0, "GPU": 2.0}
    assert resources.gpu_worker_cpus([node], 1) == 8 and resources.gpu_worker_cpus([node], 0.5) == 4
    assert resources.gpu_worker_cpus([{"CPU": 96.0, "GPU": 8.0}], 1) == 11  # 3 of 96 reserved: 93 / 8
    assert resources.gpu_worker_cpus([{"CPU": 1.0, "GPU": 2.0}], 1) == 0.5
    assert resources.gpu_worker_cpus([{"CPU": 1.0, "GPU": 2.0}, node], 1) == 0.5  # the smallest share fits all
    assert resources.gpu_worker_cpus([{"CPU": 8.0}], 1) is None
    assert resources.worker_capacity([node, {"CPU": 4.0, "GPU": 1.0}], 1, 8) == 2  # the 4-CPU node holds none
    opts = resolve_pool_options(ClusterOptions(), {"CPU": 16, "GPU": 2}, [node])
    assert (opts.workers, opts.cpus_per_worker) == (2, 8)
    assert resolve_pool_options(ClusterOptions(), {"CPU": 16}).cpus_per_worker == resources.CPU_WORKER_CPUS
    assert resolve_pool_options(ClusterOptions(cpus_per_worker=3), {"CPU": 16, "GPU": 2}, [node]).cpus_per_worker == 3
    # a joined cluster may grow: a GPU ask it cannot hold yet is kept (and waited for), never turned into CPU
    grow = resolve_pool_options(ClusterOptions(workers=4, gpus_per_worker=1), {"CPU": 4}, [{"CPU": 4.0}],
                                can_grow=True)
    assert (grow.workers, grow.gpus_per_worker) == (4, 1)
    assert resolve_pool_options(ClusterOptions(), {"CPU": 4}, can_grow=True, asked_gpus=True).gpus_per_worker == 1
    asks = []
    monkeypatch.setattr(resources, "request_bundles", lambda ray, bundles: asks.append(bundles))
    fake = _FakeRay([{"Alive": True, "Resources": {"CPU": 4.0}}])
    with pytest.raises(RuntimeError, match="no node with .*GPU.* joined within --start-timeout 0"):
        resources.wait_for_gpu_nodes(fake, 2, 1.0, None, timeout=0)
    assert asks == [[{"GPU": 1.0}, {"GPU": 1.0}]]


def test_cpus_per_worker_flag_and_job_file_key(tmp_path):
    from dreamfleet.cluster.commands import check_cluster_flags

    job = tmp_path / "job.toml"
    job.write_text('inputs = ["in"]\noutput = "out"\ncpus-per-worker = 6\n')
    args = _parse([str(job)])
    resolve_job(args)
    assert args.cpus_per_worker == 6
    args = _parse([str(job), "--cpus-per-worker", "3"])
    resolve_job(args)
    assert args.cpus_per_worker == 3  # the flag wins
    check_cluster_flags(args)
    with pytest.raises(ValueError, match="--cpus-per-worker .* must be a number > 0, got 0"):
        check_cluster_flags(_parse(["a", "-o", "b", "--cpus-per-worker", "0"]))
    job.write_text('inputs = ["in"]\noutput = "out"\ncpus-per-worker = "many"\n')
    args = _parse([str(job)])
    resolve_job(args)
    with pytest.raises(ValueError, match=r"cpus-per-worker\) must be a number > 0, got 'many'"):
        check_cluster_flags(args)
