"""A whole job in one process: plan the inputs, lock the output folder, dream, report.

Nothing per image accumulates: records stream to the report (``engine.report``) as they are
decided or finished, totals are counted, and the plan keeps only the work items to dream.
Existing outputs the done-ledger (``engine.ledger``) vouches for are skipped without a read.
A persistent write error (``engine.writeguard``) stops the job with one line saying why.

Planning reads headers only (sizes, EXIF orientation), so a million-file folder is listed
without decoding it. Existing outputs are skipped unless ``overwrite``; an output folder
that holds results of *other* parameters is refused rather than silently mixed. A lock
file keeps two runs from writing the same folder at once. The output may be an object-store
URL: then the lock is a lease object (``engine.lease``), the skip check is answered from one
listing of the output prefix, and inputs' headers are probed by a few threads in parallel.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .atomic import clean_stale_temporaries
from .config import DreamConfig, config_to_dict
from .imageio import ImageLoadError, probe_size, read_metadata
from .inputs import discover, output_path
from .ledger import Ledger, vouched
from .models import get_spec
from .octaves import plan_shapes, usable_octaves
from .outputlock import JobLocked, OutputLock, output_lock  # noqa: F401  (JobLocked, OutputLock: re-exported)
from .report import ImageRecord, RunReport
from .runner import BackendFactory, DreamRunner, WorkItem
from .sizing import working_size
from .storage import URL, Storage, is_url, location
from .video.plan import plan_video
from .video.probe import settle_kind
from .vocabulary import JOB_FILE_NAME, STATE_DIR
from .writeguard import STOP_AFTER, stop_message

log = logging.getLogger(__name__)

PROBE_THREADS = 16  # header probes of object-store inputs in flight at once


class JobMismatch(ValueError):
    """The output folder holds results made with other parameters."""


@dataclass
class JobPlan:
    """The compact plan: what to dream (path, rel, output, working size) and the batch shapes."""
    todo: list[WorkItem] = field(default_factory=list)
    records: list[ImageRecord] = field(default_factory=list)  # planning records, only without an on_record
    shapes: list[tuple[int, int, int]] = field(default_factory=list)
    planned: Counter = field(default_factory=Counter)  # skipped / failed at planning


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


PLAN_CHUNK = 4096  # items decided at once: probes run in parallel within a chunk, memory stays bounded


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def plan_job(cfg: DreamConfig, inputs: list[str], out_dir: Path | URL, storage: Storage | None = None,
             on_record: Callable[[ImageRecord], None] | None = None, ledger: Ledger | None = None) -> JobPlan:
    """List inputs, decide skip / fail / dream for each, and the batch shapes to run.

    Planning records (skipped, failed) go to ``on_record`` as they are decided (without it: to
    ``plan.records``). With a ``ledger``, an existing output whose size and stamp the ledger
    vouches for is skipped without reading it; other existing outputs are probed.
    """
    spec = get_spec(cfg.model)
    storage = storage or Storage.for_config(cfg)
    plan = JobPlan()
    emit = on_record or plan.records.append
    items, problems = discover(inputs, out_dir, storage)
    for src, why in problems:
        emit(ImageRecord(src, src, "failed", reason=why))
    listing = storage.listing(out_dir) if is_url(out_dir) else None  # one listing, not a HEAD each
    entries = ledger.load(listing) if ledger is not None and not cfg.overwrite else {}
    # an existing output counts as done only if it embeds this job's hash; a folder claimed by this job
    # (a resumed --overwrite) redoes older outputs, an unclaimed one refuses them
    ours, claimed = cfg.param_hash(), folder_param_hash(out_dir, storage) == cfg.param_hash()

    def decide(item):
        """Without reading anything: a record now, or (item, out, stamp of the existing output or None) to probe."""
        try:
            video = item.kind == "video"
            out = output_path(out_dir, item.rel, cfg.output_format, item.kind)
        except ValueError as exc:
            return ImageRecord(str(item.path), item.rel, "failed", reason=str(exc))
        stamp = None
        if cfg.overwrite:
            pass
        elif listing is not None:
            stamp = listing.get(str(out))
        else:
            with contextlib.suppress(OSError):
                st = os.stat(out)
                stamp = [st.st_size, st.st_mtime_ns]
        if stamp is not None and ledger is not None and vouched(entries, ledger.name(out), stamp):
            return ImageRecord(str(item.path), item.rel, "skipped", output=str(out), reason="output exists")
        return item, out, stamp, video

    def replan(item, kind: str, head: bytes):  # the name guessed wrong: plan ``item`` as its bytes say, once
        log.info("%s: its bytes say %s; planned as one", item.rel, kind)
        job = decide(dataclasses.replace(item, kind=kind))
        return probe(job, head) if isinstance(job, tuple) else job

    def probe(job, head: bytes | None = None):
        """-> a skipped/failed record, a WorkItem, or the description of a foreign output (str); ``head``: set once
        a replan settled the kind."""
        item, out, stamp, video = job
        if stamp is not None:
            made_with = output_param_hash(out, storage)
            if made_with == ours or (made_with is None and claimed):  # None: BMP keeps no metadata
                return ImageRecord(str(item.path), item.rel, "skipped", output=str(out), reason="output exists",
                                   output_stamp=stamp)  # probed: the ledger vouches for it next time
            if not claimed:
                return f"{item.rel} (hash {made_with})"
            log.info("%s was made with other parameters (hash %s) before this job's --overwrite; redoing it",
                     item.rel, made_with)
        try:
            if video:  # issue 20: a video is one work item (all its frames on one worker)
                return plan_video(item.path, item.rel, out, cfg, storage)
            w, h = probe_size(item.path, cfg.max_pixels, storage)
            hw = working_size(w, h, cfg)
            usable_octaves(hw[0], hw[1], cfg.octaves, cfg.octave_scale, spec.min_size)
        except (ImageLoadError, ValueError) as exc:  # the bytes say what it is (a clip named .jpg, a photo .mp4)
            kind, head, why = settle_kind(exc, video, head, item.path, storage)
            return replan(item, kind, head) if kind else ImageRecord(str(item.path), item.rel, "failed", reason=why)
        return WorkItem(str(item.path), item.rel, str(out), hw)

    threaded = listing is not None or any(isinstance(item.path, URL) for item in items)
    foreign: list[str] = []
    with ThreadPoolExecutor(max_workers=PROBE_THREADS if threaded else 1) as pool:
        for chunk in _chunks(items, PLAN_CHUNK):
            cheap = [decide(item) for item in chunk]
            jobs = [c for c in cheap if isinstance(c, tuple)]
            probed = iter(pool.map(probe, jobs) if threaded else map(probe, jobs))  # latency-bound: in parallel
            for c in cheap:
                res = next(probed) if isinstance(c, tuple) else c
                if isinstance(res, str):
                    foreign.append(res)
                elif isinstance(res, (WorkItem, list)):  # a list: a long video's segments
                    plan.todo.extend(res if isinstance(res, list) else [res])
                else:
                    plan.planned[res.status] += 1
                    emit(res)
    if foreign:
        raise JobMismatch(f"{out_dir} holds {len(foreign)} output(s) made with other parameters or not by "
                          f"dreamfleet (e.g. {foreign[0]}; this job {ours}); pass --overwrite to replace them "
                          "or choose another -o")
    plan.todo.sort(key=lambda i: (i.hw, i.rel))
    plan.shapes = plan_shapes([i.hw for i in plan.todo], cfg.batch_size, cfg.octaves, cfg.octave_scale, spec.min_size,
                              tile=cfg.tile, tile_overlap=cfg.tile_overlap)
    return plan


@contextlib.contextmanager
def prepared_job(cfg: DreamConfig, inputs: list[str], out_dir: Path | URL, command: str = "dream",
                 on_planned: Callable[[ImageRecord], None] | None = None):
    """Lock ``out_dir``, remove stale temporaries, check the parameters, plan; yields (report, plan).

    The lock is held for the whole ``with`` block; planning records (skipped, failed) are already
    in the report (and passed to ``on_planned``). Every record added to the report also notes its
    output in the done-ledger. Both the in-process job and the cluster driver start this way.
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
        report.start()
        ledger = Ledger(out_dir, cfg.param_hash(), report.run_id, storage)
        report.listeners.append(ledger.record)

        def planned(rec: ImageRecord) -> None:
            report.add(rec)
            if on_planned:
                on_planned(rec)

        try:
            with report.bulk():
                plan = plan_job(cfg, inputs, out_dir, storage, on_record=planned, ledger=ledger)
            write_job_file(out_dir, cfg, storage)
            report.set_batch(cfg.batch_size)
            log.info("%d to dream, %d skipped, %d failed at planning; shapes %s", len(plan.todo),
                     plan.planned["skipped"], plan.planned["failed"], plan.shapes)
            yield report, plan
        except BaseException as exc:  # refused, crashed or interrupted: the summary says so, its refresher stops
            report.abort(exc)
            raise
        finally:
            ledger.close()


def stop_if_tripped(report: RunReport, cause: str | None) -> None:
    """After a persistent write error stopped the job: the summary's ``stopped`` entry and its one line."""
    if cause:
        report.extra["stopped"] = {"cause": cause, "not_attempted": report.not_attempted, "after": STOP_AFTER,
                                   "message": stop_message(cause, report.not_attempted)}


def run_job(cfg: DreamConfig, inputs: list[str], out_dir: str | Path | URL, backend_factory: BackendFactory,
            progress: bool | None = None) -> RunReport:
    """Dream every input into ``out_dir`` (a folder or an object-store URL); writes and returns the report."""
    with prepared_job(cfg, inputs, location(out_dir)) as (report, plan):
        if plan.todo:
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            runner = DreamRunner(cfg, backend_factory)
            report.extra["backend"] = runner.backend.describe()
            report.extra["cpu_lanes"] = runner.lanes.describe() if runner.lanes else None  # issue 17: lanes used
            report.extra["weights"] = runner.dm.weights_info
            try:
                runner.prepare(plan.shapes)
                t_work, cpu_work, faults = time.perf_counter(), time.process_time(), _page_faults()
                bar = _progress(sum(i.frames or 1 for i in plan.todo), progress)  # a video counts its frames
                runner.process(plan.todo, on_record=lambda r: (report.add(r), r.video or bar.update(1)),  # nothing accumulates
                               on_frames=bar.update)
                bar.close()
                report.work_seconds = time.perf_counter() - t_work
                report.extra["work_cpu_seconds"] = round(time.process_time() - cpu_work, 3)  # all threads: cores busy
                report.extra["work_page_faults"] = _page_faults() - faults  # minor faults: memory touched afresh
                report.extra["io_threads"] = runner.io_threads
                report.extra["host_ms_per_image"] = runner.stages.per_image_ms()  # summed over threads
                stop_if_tripped(report, runner.storage.cause)
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
    return tqdm(total=total, unit="frame", disable=not enabled, dynamic_ncols=True)  # images count as one frame
