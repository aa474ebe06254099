"""Inputs and outputs on an S3-compatible object store (moto server on loopback), in process.

dream + resume + a broken object, equivalence with the same job on local disk, the lease
lock, a missing bucket / refused credentials / missing s3fs (exit 2), retries of transient
errors. The Ray job against the same server is in test_storage_s3_ray.py.
"""
from __future__ import annotations

import errno
import io
import json
import sys
import time

import numpy as np
import pytest
import s3_fixtures
from PIL import Image
from s3_fixtures import moto_server

from dreamfleet.cli import main
from dreamfleet.engine.atomic import TMP_SUFFIX
from dreamfleet.engine.imageio import ImageLoadError, load_image, read_metadata
from dreamfleet.engine.lease import LeaseHeld, LeaseLock
from dreamfleet.engine.report import read_records
from dreamfleet.engine.storage import URL, Storage, is_transient, location

s3, s3_endpoint = s3_fixtures.s3, s3_fixtures.s3_endpoint  # the module's moto server, a bucket per test
TINY = ["--model", "googlenet", "--random-weights", "--max-side", "64", "--iterations", "1", "--octaves", "2",
        "--batch-size", "2", "--no-progress"]


def _png(seed: int, h: int = 48, w: int = 64) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


GOOD = {"img00.png": _png(0), "img01.png": _png(1, 64), "img02.png": _png(2), "sub/nested.png": _png(3, 64)}


def _upload_inputs(s3, prefix="in/"):
    for key, data in GOOD.items():
        s3.put(prefix + key, data)
    s3.put(prefix + "broken.png", b"\x89PNG garbage")
    s3.put(prefix + "notes.txt", b"not an input")


def _report(s3, prefix="out/"):
    return json.loads(s3.get(prefix + "dreamfleet-report.json"))


def test_url_paths_mirror_like_folders():
    u = URL("s3://b/in//a/./x.png")
    assert str(u) == "s3://b/in/a/x.png" and u.name == "x.png" and u.suffix == ".png" and u.bucket == "b"
    assert u.relative_to(URL("s3://b/in")).as_posix() == "a/x.png" and URL("s3://b/out") / "a/y.png" == \
        URL("s3://b/out/a/y.png")
    assert URL("s3://b/out") in URL("s3://b/out/a/y.png").parents
    with pytest.raises(ValueError):
        u.relative_to(URL("s3://b/other"))
    assert str(location("file:///tmp/x")) == "/tmp/x" and isinstance(location("s3://b/k"), URL)


def test_any_fsspec_filesystem_memory():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe({"/dreamfleet-mem/in/a.png": _png(8), "/dreamfleet-mem/in/b/c.png": _png(9, 64)})
    try:
        assert main(["dream", "memory://dreamfleet-mem/in", "-o", "memory://dreamfleet-mem/out", *TINY]) == 0
        assert fs.exists("/dreamfleet-mem/out/a.png") and fs.exists("/dreamfleet-mem/out/b/c.png")
        assert not fs.exists("/dreamfleet-mem/out/.dreamfleet/lock")  # the lease (plain PUT + read-back) released
        assert main(["dream", "memory://dreamfleet-mem/in", "-o", "memory://dreamfleet-mem/out", *TINY]) == 0
        assert json.loads(fs.cat("/dreamfleet-mem/out/dreamfleet-report.json"))["totals"]["skipped"] == 2
    finally:
        fs.rm("/dreamfleet-mem", recursive=True)


def test_file_urls_are_local_paths(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(_png(7))
    assert main(["dream", f"file://{tmp_path / 'in'}", "-o", f"file://{tmp_path / 'out'}", *TINY]) == 0
    assert (tmp_path / "out" / "a.png").exists() and (tmp_path / "out" / ".dreamfleet" / "lock").exists()  # flock


def test_dream_resume_and_broken_object(s3, tmp_path, capsys):
    _upload_inputs(s3)
    src, dst = s3.url("in"), s3.url("out")
    assert main(["dream", src, "-o", dst, *TINY]) == 1  # the broken object failed, the rest dreamed
    rep = _report(s3)
    records = list(read_records(s3.url("out"), run=rep["run"]))
    status = {r["rel"]: r["status"] for r in records}
    assert status == {**{k: "done" for k in GOOD}, "broken.png": "failed"}
    broken = next(r for r in records if r["rel"] == "broken.png")
    assert "not an image" in broken["reason"] or "cannot" in broken["reason"]
    assert "s3://" in capsys.readouterr().out  # the report location is printed as a URL
    keys = s3.keys("out/")
    assert {f"out/{k}" for k in GOOD} <= set(keys)
    assert not [k for k in keys if k.endswith(TMP_SUFFIX)] and not s3.open_uploads()  # no temporaries of any kind
    assert "out/.dreamfleet/lock" not in keys  # the lease is released
    meta = read_metadata(f"{dst}/sub/nested.png")
    assert meta["input"] == "sub/nested.png" and meta["params"]["iterations"] == 1

    # resume: every output skipped, none written again
    assert main(["dream", src, "-o", dst, *TINY]) == 1
    rep = _report(s3)
    assert rep["totals"]["skipped"] == len(GOOD) and rep["totals"]["done"] == 0 and rep["totals"]["failed"] == 1
    versions = s3.versions("out/")
    assert all(versions[f"out/{k}"] == 1 for k in GOOD)

    # a partial rerun redoes only the missing output; other parameters are refused
    s3.client.delete_object(Bucket=s3.bucket, Key="out/img01.png")
    assert main(["dream", src, "-o", dst, *TINY]) == 1
    assert _report(s3)["totals"]["done"] == 1
    assert main(["dream", src, "-o", dst, *TINY, "--step", "3"]) == 2
    assert "other parameters" in capsys.readouterr().err

    # the same job on local disk gives the same pixels
    local_in, local_out = tmp_path / "in", tmp_path / "out"
    for key, data in GOOD.items():
        (local_in / key).parent.mkdir(parents=True, exist_ok=True)
        (local_in / key).write_bytes(data)
    assert main(["dream", str(local_in), "-o", str(local_out), *TINY]) == 0
    for key in GOOD:
        remote = np.asarray(Image.open(io.BytesIO(s3.get(f"out/{key}"))))
        assert np.array_equal(remote, np.asarray(Image.open(local_out / key))), key


def test_globs_single_objects_and_job_file_options(s3, tmp_path):
    _upload_inputs(s3)
    job = tmp_path / "job.toml"
    opts = s3.storage_options
    job.write_text(f'inputs = ["{s3.url("in")}/*.png", "{s3.url("in/sub/nested.png")}"]\noutput = "{s3.url("o2")}"\n'
                   f'[storage]\nkey = "{opts["key"]}"\nsecret = "{opts["secret"]}"\n'
                   f'endpoint_url = "{opts["endpoint_url"]}"\n')
    from dreamfleet.cluster.commands import resolve_job
    from dreamfleet.engine.job import plan_job

    args = type("A", (), {"inputs": [str(job)], "config": None, "output": None, "preset": None})()
    cfg, inputs, output = resolve_job(args)
    assert cfg.storage_options["endpoint_url"] == s3.endpoint and "storage_options" not in cfg.hashed_params()
    from dreamfleet.engine.config import config_to_dict

    assert config_to_dict(cfg)["storage_options"]["secret"] == "***"  # never written into a report
    plan = plan_job(cfg, inputs, location(output))
    assert sorted(i.rel for i in plan.todo) == ["img00.png", "img01.png", "img02.png", "nested.png"]
    assert [(r.rel, r.status) for r in plan.records] == [("broken.png", "failed")]
    assert all(i.output.startswith(f"{s3.url('o2')}/") for i in plan.todo)


def test_lease_refuses_a_second_run_and_expires(s3, capsys):
    url = URL(s3.url("out/.dreamfleet/lock"))
    storage = Storage()
    with LeaseLock(url, storage, owner="first"):
        with pytest.raises(LeaseHeld, match="first"):
            LeaseLock(url, Storage()).__enter__()
        s3.put("in/a.png", _png(5))
        assert main(["dream", s3.url("in"), "-o", s3.url("out"), *TINY]) == 2
        assert "another dreamfleet run (first)" in capsys.readouterr().err
    assert not storage.exists(url)  # released
    s3.put("out/.dreamfleet/lock", json.dumps({"owner": "killed run", "token": "x", "expires": 1.0}).encode())
    with LeaseLock(url, storage, owner="second"):  # an expired lease is taken over
        assert json.loads(s3.get("out/.dreamfleet/lock"))["owner"] == "second"


def test_lease_is_renewed_while_the_run_lasts(s3):
    url = URL(s3.url("out/.dreamfleet/lock"))
    with LeaseLock(url, Storage(), ttl=3.0, owner="long run"):
        first = json.loads(s3.get("out/.dreamfleet/lock"))["expires"]
        deadline = time.monotonic() + 20
        while json.loads(s3.get("out/.dreamfleet/lock"))["expires"] == first:  # renewed every ttl / 3
            assert time.monotonic() < deadline, "lease never renewed"
            time.sleep(0.05)
        with pytest.raises(LeaseHeld, match="long run"):
            LeaseLock(url, Storage()).__enter__()


def test_missing_bucket_and_refused_credentials_exit_2(s3, monkeypatch, capsys):
    s3.put("in/a.png", _png(6))
    assert main(["dream", "s3://no-such-bucket-here/in", "-o", s3.url("out"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "bucket 'no-such-bucket-here' does not exist" in err and "Traceback" not in err
    assert main(["dream", s3.url("in"), "-o", "s3://no-such-bucket-here/out", *TINY]) == 2
    assert "output s3://no-such-bucket-here/out: bucket 'no-such-bucket-here' does not exist" in capsys.readouterr().err
    with moto_server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as strict:  # checks keys: ours are unknown there
        monkeypatch.setenv("AWS_ENDPOINT_URL", strict)
        assert main(["dream", s3.url("in"), "-o", s3.url("out"), *TINY]) == 2
        err = capsys.readouterr().err
        assert "was refused" in err and "credentials" in err and "Traceback" not in err


def test_a_throttling_and_resetting_store_is_retried_through(s3, monkeypatch):
    _upload_inputs(s3)
    with s3_fixtures.flaky_proxy(s3.endpoint) as (endpoint, counts):
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        assert main(["dream", s3.url("in"), "-o", s3.url("out"), *TINY]) == 1  # only the broken object failed
    assert counts["slowdown"] > 0 and counts["reset"] > 0, counts
    rep = _report(s3)
    assert rep["totals"]["done"] == len(GOOD) and rep["totals"]["failed"] == 1
    assert all(n == 1 for k, n in s3.versions("out/").items() if k[4:] in GOOD)


def test_missing_s3fs_names_the_extra(monkeypatch, tmp_path, capsys):
    import importlib

    registry = importlib.import_module("fsspec.registry")._registry  # classes already imported are cached there
    monkeypatch.setitem(sys.modules, "s3fs", None)
    monkeypatch.delitem(registry, "s3", raising=False)
    assert main(["dream", "s3://bucket/in", "-o", str(tmp_path / "out"), *TINY]) == 2
    assert "dreamfleet[s3]" in capsys.readouterr().err


class _FlakyFS:
    """Fails the first ``n`` calls of cat_file with ``exc``, then answers."""

    def __init__(self, n, exc):
        self.n, self.exc, self.calls = n, exc, 0

    def cat_file(self, path, start=None, end=None):
        self.calls += 1
        if self.calls <= self.n:
            raise self.exc
        return b"data"


def _client_error(status: int, code: str) -> Exception:
    exc = OSError(errno.EIO, code)
    exc.__cause__ = type("ClientError", (Exception,), {})()
    exc.__cause__.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return exc


def test_transient_errors_are_retried_with_backoff_permanent_ones_are_not():
    sleeps: list[float] = []
    storage = Storage(retries=4, backoff=0.1, sleep=sleeps.append)
    flaky = storage._fs["s3"] = _FlakyFS(3, ConnectionResetError("connection reset by peer"))
    assert storage.read_bytes("s3://b/k") == b"data" and flaky.calls == 4
    assert len(sleeps) == 3 and sleeps[0] < 0.16 and sleeps[2] > 0.19  # exponential, jittered x0.5..1.5
    assert is_transient(_client_error(503, "SlowDown")) and is_transient(OSError(errno.EBUSY, "SlowDown"))
    assert not is_transient(_client_error(400, "InvalidRequest")) and not is_transient(FileNotFoundError("k"))
    storage._fs["s3"] = hopeless = _FlakyFS(99, PermissionError("Access Denied"))
    with pytest.raises(PermissionError):
        storage.read_bytes("s3://b/k")
    assert hopeless.calls == 1  # not retried
    storage._fs["s3"] = _FlakyFS(99, _client_error(500, "InternalError"))
    with pytest.raises(OSError):
        storage.read_bytes("s3://b/k")
    storage._fs["s3"] = _FlakyFS(99, PermissionError("Access Denied"))
    with pytest.raises(ImageLoadError, match="cannot read s3://b/k.png: PermissionError"):
        load_image("s3://b/k.png", 10**6, storage)  # a permanent error becomes the image's failure reason
