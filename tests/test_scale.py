"""A job's bookkeeping at scale (issue 18): streamed report, runs, the done-ledger, the write guard's stop rule.

Tiny jobs (googlenet, random weights, 1 octave, 1 step); the 2k/20k figures are in ``bench --scale``.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import dreamfleet.engine.job as job_mod
from dreamfleet.backends import create_backend
from dreamfleet.cli import main
from dreamfleet.engine.config import make_config
from dreamfleet.engine.job import run_job
from dreamfleet.engine.report import ImageRecord, RunReport, read_records, read_summary
from dreamfleet.engine.storage import Storage
from dreamfleet.engine.writeguard import STOP_AFTER, WriteGuard, persistent_cause

TINY = dict(model="googlenet", random_weights=True, max_side=32, octaves=1, iterations=1, batch_size=4, threads=1)
TINY_ARGS = ["--model", "googlenet", "--random-weights", "--max-side", "32", "--octaves", "1", "--iterations", "1",
             "--batch-size", "4", "--threads", "1", "--no-progress"]


def _images(folder: Path, n: int, side: int = 32, noise: bool = False) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 256, (side, side, 3), dtype=np.uint8) if noise else np.full((side, side, 3), i % 250,
                                                                                           np.uint8)
        Image.fromarray(arr).save(folder / f"im{i:03d}.png")
    return folder


def _cfg(**kw):
    return make_config(None, None, {**TINY, **kw})


def test_report_streams_records_and_keeps_every_run(tmp_path):
    src, out = _images(tmp_path / "in", 6), tmp_path / "out"
    (src / "broken.png").write_bytes(b"not a png")
    first = run_job(_cfg(), [str(src)], out, create_backend, progress=False)
    lines = (out / "dreamfleet-report.jsonl").read_text().splitlines()
    assert len(lines) == 7 and all(json.loads(x)["run"] == first.run_id for x in lines)
    assert first.counts() == {"done": 6, "skipped": 0, "failed": 1}
    (out / "im000.png").unlink()  # deleted by hand: noticed and redone
    second = run_job(_cfg(), [str(src)], out, create_backend, progress=False)
    assert second.counts() == {"done": 1, "skipped": 5, "failed": 1}
    summary = read_summary(out)
    assert summary["run"] == second.run_id and summary["records"]["path"] == "dreamfleet-report.jsonl"
    assert [(r["run"], r["state"], r["totals"]["done"]) for r in summary["runs"]] == [
        (first.run_id, "finished", 6), (second.run_id, "finished", 1)]
    assert len(list(read_records(out))) == 14 and len(list(read_records(out, run=first.run_id))) == 7
    assert summary["totals"]["images"] == 7 and summary["records_by_worker"]["local"]["skipped"] == 5


def test_rerun_skips_from_the_ledger_and_notices_replaced_outputs(tmp_path, monkeypatch):
    src, out = _images(tmp_path / "in", 8), tmp_path / "out"
    run_job(_cfg(), [str(src)], out, create_backend, progress=False)
    ledger = [json.loads(x) for x in (out / ".dreamfleet" / "ledger.jsonl").read_text().splitlines()]
    assert sorted(e["o"] for e in ledger) == [f"im{i:03d}.png" for i in range(8)]
    probes = []
    real = job_mod.output_param_hash
    monkeypatch.setattr(job_mod, "output_param_hash", lambda p, s=None: probes.append(Path(p).name) or real(p, s))
    rep = run_job(_cfg(), [str(src)], out, create_backend, progress=False)
    assert rep.counts()["skipped"] == 8 and probes == []  # no output read
    # an output rewritten by dreamfleet itself (another size / mtime): probed once, then vouched for again
    data = (out / "im001.png").read_bytes()
    (out / "im001.png").write_bytes(data)
    os.utime(out / "im001.png", ns=(1, 1))
    assert run_job(_cfg(), [str(src)], out, create_backend, progress=False).counts()["skipped"] == 8
    assert probes == ["im001.png"]
    assert run_job(_cfg(), [str(src)], out, create_backend, progress=False).counts()["skipped"] == 8
    assert probes == ["im001.png"]
    # replaced by hand with another image: noticed (probed again, not vouched for)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(out / "im002.png")
    run_job(_cfg(), [str(src)], out, create_backend, progress=False)
    assert probes == ["im001.png", "im002.png"]


def test_persistent_cause_classification():
    assert persistent_cause(OSError(errno.ENOSPC, "No space left on device")) == "disk_full"
    assert persistent_cause(OSError(errno.EROFS, "Read-only file system")) == "read_only"
    assert persistent_cause(OSError(errno.EDQUOT, "Disk quota exceeded")) == "quota"
    assert persistent_cause(PermissionError(errno.EACCES, "Permission denied")) == "permission"
    assert persistent_cause(FileNotFoundError("NoSuchBucket: The specified bucket does not exist")) == "no_bucket"
    assert persistent_cause(OSError("An error occurred (AccessDenied) when calling PutObject")) == "access_denied"
    assert persistent_cause(OSError(errno.ECONNRESET, "reset")) is None
    guard = WriteGuard(Storage())
    for _ in range(STOP_AFTER - 1):
        guard._failed("disk_full", OSError())
    guard._failed("read_only", OSError())  # another cause: the run starts again
    assert guard.cause is None


def test_injected_full_disk_stops_the_job_and_the_rerun_finishes(tmp_path, monkeypatch, capsys):
    """No root needed: the output storage fails every image write with ENOSPC."""
    src, out = _images(tmp_path / "in", 16), tmp_path / "out"
    real = Storage.write_bytes
    attempts = []

    def full(self, p, data, fsync=True, **kw):
        if str(p).endswith(".png"):
            attempts.append(p)
            raise OSError(errno.ENOSPC, "No space left on device", str(p))
        return real(self, p, data, fsync=fsync, **kw)

    monkeypatch.setattr(Storage, "write_bytes", full)
    assert main(["dream", str(src), "-o", str(out), *TINY_ARGS, "--batch-size", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    n_failed = len(attempts)
    assert STOP_AFTER <= n_failed <= STOP_AFTER + (os.cpu_count() or 1)  # plus writes already on writer threads
    assert err[-1] == f"the output disk is full: {16 - n_failed} images not attempted; free space and rerun"
    summary = read_summary(out)
    assert summary["state"] == "stopped" and summary["stopped"]["cause"] == "disk_full"
    recs = list(read_records(out, run=summary["run"]))
    assert len(recs) == 16 and all(r["status"] == "failed" for r in recs)
    assert sum("not attempted: the output disk is full" in r["reason"] for r in recs) == 16 - n_failed
    monkeypatch.setattr(Storage, "write_bytes", real)  # space freed
    assert main(["dream", str(src), "-o", str(out), *TINY_ARGS]) == 0
    assert read_summary(out)["totals"]["done"] == 16


def test_sigkilled_run_leaves_a_record_for_every_finished_image(tmp_path):
    src, out = _images(tmp_path / "in", 40, noise=True), tmp_path / "out"
    args = [str(src), "-o", str(out), *TINY_ARGS, "--batch-size", "2"]
    cmd = [sys.executable, "-m", "dreamfleet.cli", "dream", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = out / "dreamfleet-report.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if records.exists() and len(records.read_bytes().splitlines()) >= 8:
            break
        time.sleep(0.05)  # polling for progress, not waiting for a result
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = [json.loads(x) for x in records.read_text().splitlines() if x.strip()]  # every line parses
    done = {r["rel"] for r in lines if r["status"] == "done"}
    written = {p.name for p in out.glob("*.png")}
    assert len(done) >= 8 and done <= written
    assert len(written - done) <= 2 * 2 + (os.cpu_count() or 1)  # only the writes window's last outputs
    summary = read_summary(out)
    assert summary["state"] == "running" and summary["run"] == lines[0]["run"]  # killed: never finished
    assert main(["dream", *args]) == 0
    summary = read_summary(out)
    assert [r["state"] for r in summary["runs"]] == ["interrupted", "finished"]
    finals = {}
    for r in read_records(out):
        finals[r["rel"]] = r["status"]
    assert len(finals) == 40 and set(finals.values()) <= {"done", "skipped"}
    assert summary["totals"]["skipped"] == len(written) and summary["totals"]["done"] == 40 - len(written)


def test_summary_is_refreshed_while_the_run_goes_on(tmp_path):
    rep = RunReport({}, tmp_path, summary_seconds=0.05)
    rep.start()
    assert read_summary(tmp_path)["state"] == "running"
    rep.add(ImageRecord("a.png", "a.png", "done"))
    deadline = time.monotonic() + 30
    while read_summary(tmp_path)["totals"]["done"] != 1 and time.monotonic() < deadline:
        time.sleep(0.02)  # polling for the refresher thread's write
    assert read_summary(tmp_path)["totals"]["done"] == 1
    rep.write()
    assert read_summary(tmp_path)["state"] == "finished" and len(list(read_records(tmp_path))) == 1
