"""Per-image records and the run report: records streamed as JSON lines, a small summary beside them.

Records are never held in memory: ``RunReport.add`` counts one and appends it (tagged with the
run's id) to ``OUT/dreamfleet-report.jsonl`` (object stores: part objects below
``OUT/dreamfleet-report.parts/``, see ``engine.jsonlog``), so a killed run leaves a line for
every image it finished and a rerun appends its own after the earlier runs'. The summary,
``OUT/dreamfleet-report.json``, holds this run's totals, config, environment, per-worker counts,
where the records are, and one entry per run of the folder (``runs``: id, command, state,
totals), so which lines belong to which run is always known. It is written when the run
starts, refreshed every ``summary_seconds`` (30 s) by a background thread, and at the end.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, fields
from typing import Iterator

import torch

from .jsonlog import JsonLog, read_lines
from .storage import Storage, is_url, location
from .version import dreamfleet_version
from .vocabulary import NOT_ATTEMPTED, RECORD_PARTS_NAME, RECORDS_NAME, REPORT_NAME, STATUSES

log = logging.getLogger(__name__)

REPORT_FORMAT = "dreamfleet-report/2"  # /1 was one JSON document with every record under "images"
SUMMARY_SECONDS = 30.0


@dataclass
class ImageRecord:
    input: str
    rel: str
    status: str  # done | skipped | failed
    output: str | None = None
    reason: str | None = None
    shape: list[int] | None = None  # working [H, W]
    timings: dict = field(default_factory=dict)  # seconds: load, dream (per image share of its batch), save
    worker: str | None = None
    attempts: int = 1
    retryable: bool = False  # failed in the model or on write (worth another try), not an unreadable input
    video: dict | None = None  # a video's facts: frames, fps, duration, frames/s, encoding, audio (engine/video)
    output_stamp: list | None = None  # [size, mtime_ns or ETag] of the output as written (for the done-ledger)


_RECORD_FIELDS = {f.name for f in fields(ImageRecord)}
_LINE_FIELDS = [f.name for f in fields(ImageRecord) if f.name != "output_stamp"]  # the stamp is the ledger's business


def record_from_line(line: dict) -> ImageRecord:
    return ImageRecord(**{k: v for k, v in line.items() if k in _RECORD_FIELDS})


def environment() -> dict:
    """Versions and hardware facts that make a figure reproducible."""
    env = {"dreamfleet": dreamfleet_version(), "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:  # from the package metadata: importing torchvision costs seconds at start-up
        env["torchvision"] = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        pass
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def records_target(out_dir):
    """Where a folder's records go: the .jsonl file, or the parts prefix on an object store."""
    out_dir = location(out_dir)
    return out_dir / (RECORD_PARTS_NAME if is_url(out_dir) else RECORDS_NAME)


def read_summary(out_dir, storage: Storage | None = None) -> dict | None:
    try:
        return json.loads((storage or Storage()).read_bytes(location(out_dir) / REPORT_NAME))
    except (OSError, ValueError):
        return None


def read_records(out_dir, run: str | None = None, storage: Storage | None = None) -> Iterator[dict]:
    """Stream a folder's record lines (all runs, oldest first; or one ``run``'s)."""
    for line in read_lines(records_target(out_dir), storage):
        if run is None or line.get("run") == run:
            yield line


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


class RunReport:
    """Counts and streams records; ``start`` / ``refresh`` / ``write`` keep the summary current."""

    def __init__(self, config: dict, out_dir, command: str = "dream", storage: Storage | None = None,
                 summary_seconds: float = SUMMARY_SECONDS) -> None:
        self.config, self.out_dir, self.command = config, location(out_dir), command  # Path or object-store URL
        self.storage = storage or Storage()
        self.started = time.time()
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.started)) + "-" + uuid.uuid4().hex[:6]
        self.t0 = time.perf_counter()
        self.work_seconds: float | None = None  # time spent after model build / warm-up
        self.extra: dict = {}
        self.state = "running"
        self.summary_seconds = summary_seconds
        self._counts = dict.fromkeys(STATUSES, 0)
        self.not_attempted = 0  # failed records of images a stopped job never finished
        self.listeners: list = []  # called with every record added (the done-ledger)
        self._by_worker: dict[str, dict] = defaultdict(lambda: dict.fromkeys(STATUSES, 0))
        self._lock = threading.Lock()
        self._records = JsonLog(records_target(self.out_dir), self.run_id, self.storage)
        self._previous: list[dict] = []
        self._env: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- records
    def add(self, rec: ImageRecord) -> None:
        if rec.status not in STATUSES:
            raise ValueError(f"unknown status {rec.status!r}; valid: {', '.join(STATUSES)}")
        line = {"run": self.run_id, **{f: getattr(rec, f) for f in _LINE_FIELDS}}  # (asdict: a deep copy)
        with self._lock:
            self._counts[rec.status] += 1
            self._by_worker[rec.worker or "local"][rec.status] += 1
            self.not_attempted += bool(rec.reason and rec.reason.startswith(NOT_ATTEMPTED) or
                                       rec.reason and f": {NOT_ATTEMPTED}" in rec.reason)
            self._records.add(line)
        for listener in self.listeners:
            listener(rec)

    def flush(self) -> None:
        with self._lock:
            self._records.flush()

    @contextlib.contextmanager
    def bulk(self, part_records: int = 10000):
        """Many records at once (planning): object-store parts of ``part_records`` instead of one per batch."""
        before, self._records.part_records = self._records.part_records, part_records
        try:
            yield self
        finally:
            self._records.part_records = before
            self.flush()

    def set_batch(self, batch_size: int) -> None:
        """Object stores: a part at least once per ``batch_size`` records (local lines are written at once)."""
        self._records.part_records = max(1, batch_size)

    def iter_records(self, status: str | None = None) -> Iterator[ImageRecord]:
        """This run's records, read back from the log (streamed)."""
        self.flush()
        for line in read_lines(records_target(self.out_dir), self.storage):
            if line.get("run") == self.run_id and (status is None or line.get("status") == status):
                yield record_from_line(line)

    @property
    def records(self) -> list[ImageRecord]:
        """This run's records as a list (read back from disk: for tests and small jobs)."""
        return list(self.iter_records())

    def counts(self) -> dict:
        with self._lock:
            return dict(self._counts)

    # ---- the summary
    def start(self) -> None:
        """Under the job's lock: learn the earlier runs, write the first summary, refresh it periodically."""
        old = read_summary(self.out_dir, self.storage) or {}
        runs = old.get("runs") if isinstance(old.get("runs"), list) else []
        for run in runs:
            if run.get("state") == "running":  # it never wrote its end: killed
                run["state"] = "interrupted"
        self._previous = runs
        self._env = environment()
        self.refresh()
        if self.summary_seconds > 0:
            self._thread = threading.Thread(target=self._refresher, name="report-summary", daemon=True)
            self._thread.start()

    def _refresher(self) -> None:
        while not self._stop.wait(self.summary_seconds):
            self.refresh()

    def totals(self) -> dict:
        wall = time.perf_counter() - self.t0
        c = self.counts()
        work = self.work_seconds or wall
        return {
            "images": sum(c.values()), **c, "wall_seconds": round(wall, 3), "work_seconds": round(work, 3),
            "images_per_s": round(c["done"] / wall, 4) if wall > 0 else None,
            "images_per_s_steady": round(c["done"] / work, 4) if work > 0 else None,
        }

    def this_run(self) -> dict:
        return {"run": self.run_id, "command": self.command, "started": _stamp(self.started),
                "updated": _stamp(time.time()), "state": self.state, "totals": self.totals()}

    def to_dict(self) -> dict:
        target = records_target(self.out_dir)
        with self._lock:
            by_worker = {w: dict(c) for w, c in self._by_worker.items()}
        return {"format": REPORT_FORMAT, **self.this_run(), "config": self.config,
                "environment": self._env or environment(), "records_by_worker": by_worker, **self.extra,
                "records": {"parts" if is_url(target) else "path": target.name, "run_key": "run",
                            "note": "one JSON line per image; `run` says which run (see `runs`) wrote it"},
                "runs": self._previous + [self.this_run()]}

    def refresh(self, path=None) -> None:
        """Write the summary now (the records so far are flushed first)."""
        try:
            self.flush()
            body = json.dumps(self.to_dict(), indent=2, default=str)
            self.storage.write_bytes(location(path or self.out_dir / REPORT_NAME), body, fsync=False)  # local: atomic
        except Exception as exc:  # a full disk, a store gone, extra changed while dumped: next time
            log.warning("cannot write the report summary now: %s: %s", type(exc).__name__, exc)

    def write(self, path=None):
        """The end of the run: final summary (state finished, or stopped), logs closed. Returns its path."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.state == "running":
            self.state = "stopped" if self.extra.get("stopped") else "finished"
        with self._lock:
            self._records.close()
        path = location(path or self.out_dir / REPORT_NAME)
        self.refresh(path)
        return path

    def abort(self, exc: BaseException) -> None:
        """The job raised before its end: the summary says so (state aborted) and the refresher stops."""
        if self.state == "running" and self._stop.is_set() is False:
            self.state = "aborted"
            self.extra["aborted"] = f"{type(exc).__name__}: {exc}"
            self.write()

    def summary(self) -> str:
        t = self.totals()
        return (f"{t['done']} dreamed, {t['skipped']} skipped, {t['failed']} failed in {t['wall_seconds']:.1f}s: "
                f"{t['images_per_s'] or 0:.3f} images/s overall, {t['images_per_s_steady'] or 0:.3f} images/s steady")

    def failure_lines(self, limit: int = 20) -> Iterator[str]:
        """What the CLI prints on stderr: the first ``limit`` failures (streamed), then how many more, then
        the stop line if a persistent write error stopped the job."""
        failed = self.counts()["failed"]
        stop = self.stop_line()
        shown = 0
        for rec in self.iter_records("failed") if failed > (self.not_attempted if stop else 0) else ():
            if stop and NOT_ATTEMPTED in (rec.reason or ""):
                continue  # summed up by the stop line
            if shown == limit:
                break
            shown += 1
            yield f"  failed: {rec.input}: {rec.reason}"
        rest = failed - shown - (self.not_attempted if stop else 0)
        if rest > 0:
            yield f"  ... and {rest} more failures (see {records_target(self.out_dir)})"
        if stop:
            yield stop

    def stop_line(self) -> str | None:
        """The one line that says why the job stopped early (a persistent write error), or None."""
        stopped = self.extra.get("stopped")
        return stopped["message"] if stopped else None


__all__ = ["REPORT_FORMAT", "REPORT_NAME", "STATUSES", "ImageRecord", "RunReport", "environment", "read_records",
           "read_summary", "record_from_line", "records_target"]
