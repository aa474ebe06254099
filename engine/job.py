"""A whole job in one process: plan the inputs, lock the output folder, dream, report.

Planning reads headers only (sizes, EXIF orientation), so a million-file folder is listed
without decoding it. Existing outputs are skipped unless ``overwrite``; an output folder
that holds results of *other* parameters is refused rather than silently mixed. A lock
file keeps two runs from writing the same folder at once. The output may be an object-store
URL: then the lock is a lease object (``engine.lease``), the skip check is answered from one
listing of the output prefix, and inputs' headers are probed by a few threads in parallel.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import clean_stale_temporaries
from .config import DreamConfig, config_to_dict
from .imageio import ImageLoadError, probe_size, read_metadata
from .inputs import discover, output_path
from .lease import LeaseHeld, LeaseLock
from .models import get_spec
from .octaves import plan_shapes, usable_octaves
from .report import ImageRecord, RunReport
from .runner import BackendFactory, DreamRunner, WorkItem
from .sizing import working_size
from .storage import URL, Storage, is_url, location
from .vocabulary import JOB_FILE_NAME, LOCK_NAME, STATE_DIR

log = logging.getLogger(__name__)

PROBE_THREADS = 16  # header probes of object-store inputs in flight at once


class JobLocked(RuntimeError):
    """Another run holds the output folder."""


class JobMismatch(ValueError):
    """The output folder holds results made with other parameters."""


@dataclass
class JobPlan:
    todo: list[WorkItem] = field(default_factory=list)
    records: list[ImageRecord] = field(default_factory=list)  # skipped and failed before dreaming
    shapes: list[tuple[int, int, int]] = field(default_factory=list)


class OutputLock:
    """flock on OUT/.dreamfleet/lock for the duration of a run."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / STATE_DIR / LOCK_NAME
        self.fh = None

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "unknown"
            self.fh.close()
            raise JobLocked(f"another dreamfleet run ({holder}) is writing to {self.path.parent.parent}; "
                            "wait for it or choose another output folder") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} on {os.uname().nodename}")
        self.fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


@contextlib.contextmanager
def output_lock(out_dir: Path | URL, storage: Storage):
    """flock for a local folder, a lease object for an object-store location."""
    if not is_url(out_dir):
        with OutputLock(out_dir) as lock:
            yield lock
        return
    try:
        lease = LeaseLock(location(out_dir) / STATE_DIR / LOCK_NAME, storage).__enter__()
    except LeaseHeld as exc:
        raise JobLocked(str(exc)) from None
    try:
        yield lease
    finally:
        lease.__exit__(None, None, None)


def folder_param_hash(out_dir: Path | URL, storage: Storage | None = None) -> str | None:
    """The parameter hash the folder was last claimed with (OUT/.dreamfleet/job.json), or None."""
    path = location(out_dir) / STATE_DIR / JOB_FILE_NAME
    try:
        return json.loads((storage or Storage()).read_bytes(path)).get("param_hash")
    except (OSError, ValueError, AttributeError):
        return None


def check_job_file(out_dir: Path | URL, cfg: DreamConfig, storage: Storage | None = None) -> None:
    """Refuse to mix results of different parameters in one folder (unless overwrite)."""
    old = folder_param_hash(out_dir, storage)
    if old and old != cfg.param_hash() and not cfg.overwrite:
        raise JobMismatch(f"{out_dir} holds dreams made with other parameters (hash {old}, this job "
                          f"{cfg.param_hash()}); pass --overwrite to replace them or choose another -o")


def write_job_file(out_dir: Path | URL, cfg: DreamConfig, storage: Storage | None = None) -> None:
    """Claim the folder for this job's parameters (after planning accepted it)."""
    body = json.dumps({"param_hash": cfg.param_hash(), "params": cfg.hashed_params()}, indent=2, default=list)
    (storage or Storage()).write_bytes(location(out_dir) / STATE_DIR / JOB_FILE_NAME, body, fsync=False)


def output_param_hash(path: Path | URL, storage: Storage | None = None) -> str | None:
    """The parameter hash embedded in an existing output, or None (no metadata, unreadable)."""
    try:
        return (read_metadata(path, storage) or {}).get("param_hash")
    except Exception:  # a foreign or damaged file: not ours
        return None


def plan_job(cfg: DreamConfig, inputs: list[str], out_dir: Path | URL, storage: Storage | None = None) -> JobPlan:
    """List inputs, decide skip / fail / dream for each, and the batch shapes to run."""
    spec = get_spec(cfg.model)
    storage = storage or Storage.for_config(cfg)
    items, problems = discover(inputs, out_dir, storage)
    plan = JobPlan(records=[ImageRecord(src, src, "failed", reason=why) for src, why in problems])
    existing = {str(u) for u in storage.find(out_dir)} if is_url(out_dir) else None  # one listing, not a HEAD each
    # an existing output counts as done only if it embeds this job's hash; a folder claimed by this job
    # (a resumed --overwrite) redoes older outputs, an unclaimed one refuses them
    ours, claimed = cfg.param_hash(), folder_param_hash(out_dir, storage) == cfg.param_hash()
    outcomes: list = []  # per item, in order: a record now, or (item, out, exists) to probe
    for item in items:
        try:
            out = output_path(out_dir, item.rel, cfg.output_format)
        except ValueError as exc:
            outcomes.append(ImageRecord(str(item.path), item.rel, "failed", reason=str(exc)))
            continue
        exists = (str(out) in existing if existing is not None else out.exists()) and not cfg.overwrite
        outcomes.append((item, out, exists))
    to_probe = [o for o in outcomes if isinstance(o, tuple)]

    def probe(job):
        """-> a skipped/failed record, a WorkItem, or the description of a foreign output (str)."""
        item, out, exists = job
        if exists:
            made_with = output_param_hash(out, storage)
            if made_with == ours or (made_with is None and claimed):  # None: BMP keeps no metadata
                return ImageRecord(str(item.path), item.rel, "skipped", output=str(out), reason="output exists")
            if not claimed:
                return f"{item.rel} (hash {made_with})"
            log.info("%s was made with other parameters (hash %s) before this job's --overwrite; redoing it",
                     item.rel, made_with)
        try:
            w, h = probe_size(item.path, cfg.max_pixels, storage)
            hw = working_size(w, h, cfg)
            usable_octaves(hw[0], hw[1], cfg.octaves, cfg.octave_scale, spec.min_size)
        except (ImageLoadError, ValueError) as exc:
            return ImageRecord(str(item.path), item.rel, "failed", reason=str(exc))
        return WorkItem(str(item.path), item.rel, str(out), hw)

    if existing is not None or any(isinstance(item.path, URL) for item, _, _ in to_probe):
        with ThreadPoolExecutor(max_workers=PROBE_THREADS) as pool:  # latency-bound: in parallel, keep order
            results = list(pool.map(probe, to_probe))
    else:
        results = map(probe, to_probe)
    results, foreign = iter(results), []
    for outcome in outcomes:
        res = next(results) if isinstance(outcome, tuple) else outcome
        if isinstance(res, str):
            foreign.append(res)
        else:
            (plan.todo if isinstance(res, WorkItem) else plan.records).append(res)
    if foreign:
        raise JobMismatch(f"{out_dir} holds {len(foreign)} output(s) made with other parameters or not by "
                          f"dreamfleet (e.g. {foreign[0]}; this job {ours}); pass --overwrite to replace them "
                          "or choose another -o")
    plan.todo.sort(key=lambda i: (i.hw, i.rel))
    plan.shapes = plan_shapes([i.hw for i in plan.todo], cfg.batch_size, cfg.octaves, cfg.octave_scale, spec.min_size,
                              tile=cfg.tile, tile_overlap=cfg.tile_overlap)
    return plan


@contextlib.contextmanager
def prepared_job(cfg: DreamConfig, inputs: list[str], out_dir: Path | URL, command: str = "dream"):
    """Lock ``out_dir``, remove stale temporaries, check the parameters, plan; yields (report, plan).

    The lock is held for the whole ``with`` block; planning records (skipped, failed) are already
    in the report. Both the in-process job and the cluster driver start this way.
    """
    storage = Storage.for_config(cfg)
    if is_url(out_dir):
        storage.check_access(out_dir, "output")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
    report = RunReport(config_to_dict(cfg), out_dir, command, storage=storage)
    with output_lock(out_dir, storage):
        stale = storage.remove_temporaries(out_dir) if is_url(out_dir) else clean_stale_temporaries(out_dir)
        if stale:
            log.info("removed %d stale temporary files left by an earlier run", stale)
        report.extra["stale_temporaries_removed"] = stale
        check_job_file(out_dir, cfg, storage)
        plan = plan_job(cfg, inputs, out_dir, storage)
        write_job_file(out_dir, cfg, storage)
        for rec in plan.records:
            report.add(rec)
        log.info("%d to dream, %d skipped, %d failed at planning; shapes %s", len(plan.todo),
                 report.counts()["skipped"], report.counts()["failed"], plan.shapes)
        yield report, plan


def run_job(cfg: DreamConfig, inputs: list[str], out_dir: str | Path | URL, backend_factory: BackendFactory,
            progress: bool | None = None) -> RunReport:
    """Dream every input into ``out_dir`` (a folder or an object-store URL); writes and returns the report."""
    with prepared_job(cfg, inputs, location(out_dir)) as (report, plan):
        if plan.todo:
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            runner = DreamRunner(cfg, backend_factory)
            report.extra["backend"] = runner.backend.describe()
            report.extra["weights"] = runner.dm.weights_info
            try:
                runner.prepare(plan.shapes)
                t_work, cpu_work, faults = time.perf_counter(), time.process_time(), _page_faults()
                bar = _progress(len(plan.todo), progress)
                runner.process(plan.todo, on_record=lambda r: (report.add(r), bar.update(1)))
                bar.close()
                report.work_seconds = time.perf_counter() - t_work
                report.extra["work_cpu_seconds"] = round(time.process_time() - cpu_work, 3)  # all threads: cores busy
                report.extra["work_page_faults"] = _page_faults() - faults  # minor faults: memory touched afresh
                report.extra["io_threads"] = runner.io_threads
                report.extra["host_ms_per_image"] = runner.stages.per_image_ms()  # summed over threads
            finally:
                runner.close()
        report.write()
    return report


def _page_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _progress(total: int, enabled: bool | None):
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, unit="img", disable=not enabled, dynamic_ncols=True)
