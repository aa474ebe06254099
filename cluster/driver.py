"""The cluster job: lock, manifest, dispatch to the actor pool, reconcile, report.

``run_cluster_job`` is ``dreamfleet run``: it connects to Ray (or starts a local one),
locks the output folder, removes temporaries a killed run left, refuses a folder made
with other parameters, plans the job with the engine (existing outputs are skipped, so a
rerun finishes only what is missing), writes the manifest, shards the work by shape and
runs it on a ``WorkerPool``. Records stream to the report, the manifest streams to its
file, and reconciliation is counted as records arrive: nothing grows with the job but the
compact plan. A worker whose write guard trips (a full disk, ``engine.writeguard``) stops
the dispatch: queued images are recorded as not attempted. At the end every manifest entry
must be done, skipped or recorded as failed; the run report gains per-worker throughput, retries, quarantined
images, the cluster's resources and the reconciliation, and a contact sheet is drawn.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from dreamfleet.engine.config import DreamConfig
from dreamfleet.engine.job import prepared_job, stop_if_tripped
from dreamfleet.engine.limits import check_limits, limited
from dreamfleet.engine.report import RunReport
from dreamfleet.engine.runner import BackendFactory
from dreamfleet.engine.storage import Storage, location
from dreamfleet.engine.vocabulary import NOT_ATTEMPTED, STATE_DIR
from dreamfleet.engine.writeguard import tripped_cause

from .contact_sheet import SHEET_NAME, make_contact_sheet
from .manifest import ManifestWriter, Reconciler, auto_shard_size, make_shards
from .pool import WorkerPool
from .progress import Progress
from .segments import for_cluster, video_count
from .sizing import pool_options_for, resolve_pool_options

log = logging.getLogger(__name__)

LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # shards carry paths, never pixels


@dataclass
class ClusterOptions:
    """The cluster flags of ``dreamfleet run``; numbers carry their valid ranges (checked by ``validate``)."""

    workers: int | None = limited(None, lo=1)  # None: one per GPU (/ gpus_per_worker), else one per CPU core pair
    gpus_per_worker: float | None = limited(None, lo=0.0)  # None: 1 when the cluster has GPUs, else 0
    address: str | None = None  # None: start a local Ray; "auto" or host:port: join a running cluster
    retries: int = limited(2, lo=0)
    shard_timeout: float = limited(1800.0, lo=0.0, note="seconds; 0: never")
    shard_size: int = limited(0, lo=0, note="0: automatic")
    torch_threads: int = limited(1, lo=1, flag="--threads-per-worker")  # per CPU worker
    cpus_per_worker: float | None = limited(None, lo=0.0, lo_open=True, note="None: a GPU node's CPUs per GPU less a reserve; 0.25 for CPU workers")
    start_timeout: float = limited(300.0, lo=0.0, note="seconds to wait for GPU nodes / the first worker")
    contact_sheet: int = limited(36, lo=0, note="pairs on the sheet; 0: none")
    dashboard: bool = False  # a local Ray starts its dashboard only when asked (--dashboard)

    def validate(self) -> "ClusterOptions":
        check_limits(self)
        return self


@dataclass
class ClusterResult:
    report: RunReport
    reconciliation: dict

    @property
    def exit_code(self) -> int:
        return 0 if self.reconciliation["ok"] and not self.report.counts()["failed"] else 1


def connect(address: str | None, dashboard: bool = False):
    """ray.init once: join ``address`` (or $RAY_ADDRESS) or start a small local Ray; returns (ray, started_here).

    A local Ray runs without the dashboard unless ``dashboard`` (Ray 2.60's raylet still starts its
    per-node dashboard agent, which cannot be switched off from ``ray.init``).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return ray, False
    if address or os.environ.get("RAY_ADDRESS"):  # --address, or inside `ray job submit`
        ray.init(address=address or None, log_to_driver=True)
    else:
        # address="local": a new Ray of our own, even where `ray start` left a cluster running on this machine
        ray.init(address="local", include_dashboard=dashboard, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 log_to_driver=True)
    return ray, True


class _LazyManifest:
    """The manifest writer, made at the first planning record (inside the lock, after the access checks)."""

    def __init__(self, out_dir, param_hash: str, storage: Storage) -> None:
        self.args, self.writer = (out_dir, param_hash, storage), None

    def get(self) -> ManifestWriter:
        if self.writer is None:
            self.writer = ManifestWriter(*self.args)
        return self.writer

    def add_record(self, rec) -> None:
        self.get().add_record(rec)


def run_cluster_job(cfg: DreamConfig, inputs: list[str], out_dir: str | Path, backend_factory: BackendFactory,
                    opts: ClusterOptions | None = None, progress: bool | None = None) -> ClusterResult:
    """Dream every input into ``out_dir`` on a Ray actor pool; writes and returns the report."""
    opts = opts or ClusterOptions()
    out_dir = location(out_dir)  # a folder or an object-store URL; workers read and write there directly
    storage = Storage.for_config(cfg)
    started = time.time()
    manifest = _LazyManifest(out_dir, cfg.param_hash(), storage)
    with prepared_job(cfg, inputs, out_dir, command="run", on_planned=manifest.add_record) as (report, plan):
        writer = manifest.get()
        writer.add_todo(plan.todo)
        entries = writer.close()
        recon = Reconciler(storage)
        for status, n in writer.planned.items():  # planning records are accounted for as planned
            if status in recon.counts:
                recon.counts[status] += n
        report.listeners.append(recon.add)
        if plan.todo:
            _dream_on_cluster(cfg, plan, backend_factory, opts, report, progress, started)
        rec_summary = recon.result(entries, out_dir, report.iter_records)
        report.extra["reconciliation"] = rec_summary
        if opts.contact_sheet:
            report.extra["contact_sheet"] = _contact_sheet(report, plan, out_dir, opts.contact_sheet, storage)
        report.write()
    if not rec_summary["ok"]:
        log.error("%d manifest entries unaccounted for, e.g. %s", len(rec_summary["unaccounted"]),
                  rec_summary["unaccounted"][:3])
    return ClusterResult(report, rec_summary)


def _contact_sheet(report: RunReport, plan, out_dir, limit: int, storage: Storage) -> str | None:
    """Draw the sheet from this run's records (streamed); a skip-only rerun keeps the existing one."""
    sheet = out_dir / SHEET_NAME
    if any(location(i.output) == sheet.resolve() for i in plan.todo):
        sheet = out_dir / STATE_DIR / SHEET_NAME
    if not report.counts()["done"] and storage.exists(sheet):
        return str(sheet)
    made = make_contact_sheet(report.iter_records(), sheet, limit=limit, storage=storage)
    return str(made) if made else None


def _dream_on_cluster(cfg, plan, backend_factory, opts, report, progress, started) -> None:
    ray, started_here = connect(opts.address, opts.dashboard)
    try:
        joined = bool(opts.address or os.environ.get("RAY_ADDRESS")) or not started_here  # may autoscale
        pool_opts = pool_options_for(ray, opts, cfg, can_grow=joined)  # may wait for GPU nodes
        resources = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        # object-store output: videos split only on a one-node Ray started here (a joined cluster may grow, and
        # its driver may not share the workers' node-local segment state)
        plan.todo = for_cluster(plan.todo, 2 if joined else len(nodes))
        shard_size = opts.shard_size or auto_shard_size(len(plan.todo), pool_opts.workers, cfg.batch_size)
        shards = make_shards(plan.todo, shard_size)
        report.extra["cluster"] = {"resources": resources, "nodes": len(nodes), "workers": pool_opts.workers,
                                   "gpus_per_worker": pool_opts.gpus_per_worker,
                                   "cpus_per_worker": pool_opts.cpus_per_worker, "shards": len(shards),
                                   "shard_size": shard_size, "retry_budget": pool_opts.retries,
                                   "ray": ray.__version__, "address": opts.address or "local"}
        log.info("%d shards of <= %d images on %d workers (%g GPU each); cluster %s", len(shards), shard_size,
                 pool_opts.workers, pool_opts.gpus_per_worker, resources)
        bar = Progress(video_count(plan.todo), progress)
        pool = WorkerPool(cfg, backend_factory, pool_opts, plan.shapes, started=started)

        stop: dict = {}  # a worker's write guard tripped (persistent write error): dispatch nothing more

        def on_record(rec) -> None:
            report.add(rec)
            bar.add(rec.worker or "?", rec.status)
            if not stop and (cause := tripped_cause(rec.reason)):
                stop.update(cause=cause, reason=rec.reason[rec.reason.index(NOT_ATTEMPTED):])
                log.error("%s; stopping the job (no more shards are dispatched)", stop["reason"])

        t_work = time.perf_counter()
        try:
            stats = pool.run(shards, on_record, tick=lambda: (setattr(bar, "retries", pool.stats.retries),
                                                              bar.tick()), stop=lambda: stop.get("reason"))
        finally:
            pool.close()
            bar.close()
        report.work_seconds = time.perf_counter() - (pool.first_ready or t_work)  # after the first worker is up
        report.extra.update({"workers": stats.workers, "retries": stats.retries,
                             "worker_restarts": stats.worker_restarts, "quarantined": stats.quarantined})
        stop_if_tripped(report, stop.get("cause"))
        backends = [w.get("backend") for w in stats.workers.values() if w.get("backend")]
        if backends:
            report.extra["backend"] = backends[0]
    finally:
        if started_here:
            ray.shutdown()


__all__ = ["ClusterOptions", "ClusterResult", "LOCAL_OBJECT_STORE_BYTES", "connect", "resolve_pool_options",
           "run_cluster_job"]
