"""Issue 18 on real storage: a small full filesystem (tmpfs, needs root) and the S3 request count of a rerun."""
from __future__ import annotations

import os
import re
import subprocess
import uuid

import pytest
import s3_fixtures
from test_scale import TINY_ARGS, _images

from dreamfleet.cli import main
from dreamfleet.engine.report import read_summary


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs mounted at tmp_path/mnt (skips cleanly where mounting is not allowed)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_full_disk_stops_within_two_batches_and_the_rerun_finishes(tmp_path, small_fs, capsys):
    src, out = _images(tmp_path / "in", 40, side=64, noise=True), small_fs / "out"
    args = ["dream", str(src), "-o", str(out), *TINY_ARGS, "--max-side", "64"]  # outputs ~13 KB of noise each
    out.mkdir()
    st = os.statvfs(small_fs)
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 40 * 1024))  # 40 KB left: bookkeeping, not 40 dreams
    assert main(args) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    m = re.fullmatch(r"the output disk is full: (\d+) images not attempted; free space and rerun", line)
    assert m, line
    written = len(list(out.glob("*.png")))
    failed_writes = 40 - written - int(m.group(1))
    print(f"full disk: {written} written, {failed_writes} failed writes, {m.group(1)} not attempted")
    assert 3 <= failed_writes <= 2 * 4  # at most two batches' worth of failed writes (batch size 4)
    assert not list(out.rglob("*.dreamfleet-tmp"))
    filler.unlink()  # space freed
    assert main(args) == 0
    totals = read_summary(out)["totals"]
    assert (totals["done"], totals["skipped"]) == (40 - written, written)


@pytest.fixture
def logged_s3(tmp_path, monkeypatch):
    """A fresh moto server whose request log we read, and a bucket on it."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    log = tmp_path / "moto.log"
    with s3_fixtures.moto_server(log=log) as endpoint:
        for var, value in (("AWS_ACCESS_KEY_ID", s3_fixtures.KEY), ("AWS_SECRET_ACCESS_KEY", s3_fixtures.SECRET),
                           ("AWS_DEFAULT_REGION", s3_fixtures.REGION), ("AWS_ENDPOINT_URL", endpoint)):
            monkeypatch.setenv(var, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        bucket = f"dreamfleet-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint, region_name=s3_fixtures.REGION, aws_access_key_id=s3_fixtures.KEY,
                     aws_secret_access_key=s3_fixtures.SECRET).create_bucket(Bucket=bucket)
        yield bucket, log


def _requests_under(log, bucket: str, prefix: str, since: int) -> list[str]:
    """Request lines (after byte ``since`` of the log) on objects under s3://bucket/prefix: keys and listings."""
    text = log.read_bytes()[since:].decode(errors="replace")
    reqs = re.findall(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP', text)
    under = [f"{m} {p}" for m, p in reqs
             if p.startswith(f"/{bucket}/{prefix}") or (p.startswith(f"/{bucket}?") and f"prefix={prefix}" in p)]
    return under


def test_s3_skip_only_rerun_of_400_outputs_makes_few_requests(tmp_path, logged_s3):
    bucket, log = logged_s3
    src = _images(tmp_path / "in", 400, side=16)  # local inputs: only the output side is counted
    args = ["dream", str(src), "-o", f"s3://{bucket}/out", *TINY_ARGS, "--max-side", "16", "--batch-size", "100"]
    assert main(args) == 0
    since = log.stat().st_size
    assert main(args) == 0
    reqs = _requests_under(log, bucket, "out", since)
    assert read_summary(f"s3://{bucket}/out")["totals"]["skipped"] == 400
    print(f"S3 skip-only rerun of 400: {len(reqs)} requests under -o: {reqs}")
    assert len(reqs) <= 50, reqs
    assert not [r for r in reqs if r.startswith("GET") and r.endswith(".png")]  # no output read
