"""A whole job in one process: plan the inputs, lock the output folder, dream, report.

Planning reads headers only (sizes, EXIF orientation), so a million-file folder is listed
without decoding it. Existing outputs are skipped unless ``overwrite``; an output folder
that holds results of *other* parameters is refused rather than silently mixed. A lock
file keeps two runs from writing the same folder at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import DreamConfig, config_to_dict
from .imageio import ImageLoadError, probe_size
from .inputs import clean_stale_temporaries, discover, output_path
from .models import get_spec
from .octaves import plan_shapes, usable_octaves
from .report import ImageRecord, RunReport
from .runner import BackendFactory, DreamRunner, WorkItem
from .sizing import working_size

log = logging.getLogger(__name__)

STATE_DIR = ".dreamfleet"


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
        self.path = Path(out_dir) / STATE_DIR / "lock"
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


def check_job_file(out_dir: Path, cfg: DreamConfig) -> None:
    """Refuse to mix results of different parameters in one folder (unless overwrite)."""
    path = Path(out_dir) / STATE_DIR / "job.json"
    if path.exists() and not cfg.overwrite:
        try:
            old = json.loads(path.read_text()).get("param_hash")
        except ValueError:
            old = None
        if old and old != cfg.param_hash():
            raise JobMismatch(f"{out_dir} holds dreams made with other parameters (hash {old}, this job "
                              f"{cfg.param_hash()}); pass --overwrite to replace them or choose another -o")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"param_hash": cfg.param_hash(), "params": cfg.hashed_params()}, indent=2, default=list))


def plan_job(cfg: DreamConfig, inputs: list[str], out_dir: Path) -> JobPlan:
    """List inputs, decide skip / fail / dream for each, and the batch shapes to run."""
    spec = get_spec(cfg.model)
    items, problems = discover(inputs, out_dir)
    plan = JobPlan(records=[ImageRecord(src, src, "failed", reason=why) for src, why in problems])
    for item in items:
        try:
            out = output_path(out_dir, item.rel, cfg.output_format)
        except ValueError as exc:
            plan.records.append(ImageRecord(str(item.path), item.rel, "failed", reason=str(exc)))
            continue
        if out.exists() and not cfg.overwrite:
            plan.records.append(ImageRecord(str(item.path), item.rel, "skipped", output=str(out),
                                            reason="output exists"))
            continue
        try:
            w, h = probe_size(item.path, cfg.max_pixels)
            hw = working_size(w, h, cfg)
            usable_octaves(hw[0], hw[1], cfg.octaves, cfg.octave_scale, spec.min_size)
        except (ImageLoadError, ValueError) as exc:
            plan.records.append(ImageRecord(str(item.path), item.rel, "failed", reason=str(exc)))
            continue
        plan.todo.append(WorkItem(str(item.path), item.rel, str(out), hw))
    plan.todo.sort(key=lambda i: (i.hw, i.rel))
    plan.shapes = plan_shapes([i.hw for i in plan.todo], cfg.batch_size, cfg.octaves, cfg.octave_scale, spec.min_size,
                              tile=cfg.tile, tile_overlap=cfg.tile_overlap)
    return plan


@contextlib.contextmanager
def prepared_job(cfg: DreamConfig, inputs: list[str], out_dir: Path, command: str = "dream"):
    """Lock ``out_dir``, remove stale temporaries, check the parameters, plan; yields (report, plan).

    The lock is held for the whole ``with`` block; planning records (skipped, failed) are already
    in the report. Both the in-process job and the cluster driver start this way.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report = RunReport(config_to_dict(cfg), out_dir, command)
    with OutputLock(out_dir):
        stale = clean_stale_temporaries(out_dir)
        if stale:
            log.info("removed %d stale temporary files left by an earlier run", stale)
        report.extra["stale_temporaries_removed"] = stale
        check_job_file(out_dir, cfg)
        plan = plan_job(cfg, inputs, out_dir)
        for rec in plan.records:
            report.add(rec)
        log.info("%d to dream, %d skipped, %d failed at planning; shapes %s", len(plan.todo),
                 report.counts()["skipped"], report.counts()["failed"], plan.shapes)
        yield report, plan


def run_job(cfg: DreamConfig, inputs: list[str], out_dir: str | Path, backend_factory: BackendFactory,
            progress: bool | None = None) -> RunReport:
    """Dream every input into ``out_dir``; writes and returns the run report."""
    with prepared_job(cfg, inputs, Path(out_dir)) as (report, plan):
        if plan.todo:
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            runner = DreamRunner(cfg, backend_factory)
            report.extra["backend"] = runner.backend.describe()
            report.extra["weights"] = runner.dm.weights_info
            try:
                runner.prepare(plan.shapes)
                t_work = time.perf_counter()
                bar = _progress(len(plan.todo), progress)
                runner.process(plan.todo, on_record=lambda r: (report.add(r), bar.update(1)))
                bar.close()
                report.work_seconds = time.perf_counter() - t_work
            finally:
                runner.close()
        report.write()
    return report


def _progress(total: int, enabled: bool | None):
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, unit="img", disable=not enabled, dynamic_ncols=True)
