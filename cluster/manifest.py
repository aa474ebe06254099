"""The job manifest: every input of a cluster job, its content hash, and how it is sharded.

The manifest is written to ``OUT/.dreamfleet/manifest.jsonl`` (a header line with the
job's parameter hash, then one line per input: path, relative path, size, content hash,
output path, working shape). A rerun reuses the hashes of inputs whose size and mtime
did not change. On an object store the content hash is the object's ETag (read from the
listing, so the driver never downloads an input) and the manifest is one PUT. Shards are lists of work items (paths, never pixels) cut inside one shape
bucket, so each shard is a few full engine batches. ``reconcile`` checks the manifest
against the final records and the files on disk at the end of a job.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path

from dreamfleet.engine.atomic import file_digest
from dreamfleet.engine.job import JobPlan
from dreamfleet.engine.report import ImageRecord
from dreamfleet.engine.runner import WorkItem
from dreamfleet.engine.storage import Storage, is_url, location
from dreamfleet.engine.vocabulary import FINISHED, MANIFEST_NAME, STATE_DIR, STATUSES

log = logging.getLogger(__name__)


HASH_THREADS = 8


@dataclass
class ManifestEntry:
    rel: str
    input: str
    size: int | None
    mtime_ns: int | None
    content_hash: str | None
    output: str | None
    hw: list[int] | None
    planned: str  # todo | skipped | failed


def content_hash(path: str | Path) -> str:
    """The manifest's input fingerprint: 16-byte blake2b (32 hex digits), as in earlier manifests."""
    return file_digest(path, "blake2b", digest_size=16)


def manifest_path(out_dir):
    return location(out_dir) / STATE_DIR / MANIFEST_NAME


def _previous_hashes(path, storage: Storage) -> dict[tuple[str, int, int], str]:
    known: dict[tuple[str, int, int], str] = {}
    if not storage.exists(path):
        return known
    for line in storage.read_bytes(path).decode().splitlines(keepends=True)[1:]:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("content_hash") and e.get("size") is not None:
            known[(e["input"], e["size"], e["mtime_ns"])] = e["content_hash"]
    return known


def build_manifest(plan: JobPlan, out_dir, param_hash: str, storage: Storage | None = None) -> list[ManifestEntry]:
    """One entry per planned input (todo, skipped, failed at planning); writes the manifest file."""
    storage = storage or Storage()
    path = manifest_path(out_dir)
    known = _previous_hashes(path, storage)
    t0 = time.perf_counter()

    def entry(job: tuple) -> ManifestEntry:
        inp, rel, output, hw, planned = job
        if is_url(inp):  # size, mtime and ETag from the store: no download on the driver
            try:
                size, mtime_ns, etag = storage.stat(inp)
            except OSError:
                return ManifestEntry(rel, inp, None, None, None, output, hw, planned)
            return ManifestEntry(rel, inp, size, mtime_ns, f"etag:{etag}" if etag else None, output, hw, planned)
        try:
            st = os.stat(inp)
        except OSError:
            return ManifestEntry(rel, inp, None, None, None, output, hw, planned)
        h = known.get((inp, st.st_size, st.st_mtime_ns))
        if h is None:
            try:
                h = content_hash(inp)
            except OSError:
                h = None
        return ManifestEntry(rel, inp, st.st_size, st.st_mtime_ns, h, output, hw, planned)

    jobs = [(i.path, i.rel, i.output, list(i.hw), "todo") for i in plan.todo]
    jobs += [(r.input, r.rel, r.output, r.shape, r.status) for r in plan.records]
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:  # hashing is I/O bound; keeps order
        entries = list(pool.map(entry, jobs, chunksize=64))
    header = {"param_hash": param_hash, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "entries": len(entries)}
    lines = [json.dumps(header)] + [json.dumps(asdict(e)) for e in entries]
    storage.write_bytes(path, "".join(line + "\n" for line in lines), fsync=False)  # local: atomic; objects: one PUT
    log.info("manifest: %d inputs (%d to dream) hashed in %.2fs -> %s", len(entries), len(plan.todo),
             time.perf_counter() - t0, path)
    return entries


def make_shards(todo: list[WorkItem], shard_size: int) -> list[list[WorkItem]]:
    """Cut shape-sorted ``todo`` into shards of at most ``shard_size`` items, never across shape buckets.

    Videos shard apart from images: a video is one work item (all its frames on one actor), and the
    videos of one shard run frame by frame in lockstep there."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    shards: list[list[WorkItem]] = []
    ordered = sorted(todo, key=lambda i: (i.kind, tuple(i.hw), i.rel))
    for _, group in groupby(ordered, key=lambda i: (i.kind, tuple(i.hw))):
        bucket = list(group)
        shards.extend(bucket[i:i + shard_size] for i in range(0, len(bucket), shard_size))
    return shards


def auto_shard_size(n_items: int, workers: int, batch_size: int) -> int:
    """Two engine batches per shard, smaller when that would leave workers idle on a small job."""
    balanced = max(1, math.ceil(n_items / max(1, 2 * workers)))
    return max(1, min(2 * batch_size, balanced))


def reconcile(entries: list[ManifestEntry], records: list[ImageRecord], storage: Storage | None = None) -> dict:
    """Every manifest entry must end done/skipped with its output on disk, or recorded as failed."""
    final = {r.rel: r for r in records}
    present = (storage or Storage()).existing([r.output for r in final.values() if r.output and is_url(r.output)])
    unaccounted: list[dict] = []
    for e in entries:
        rec = final.get(e.rel)
        if rec is None:
            unaccounted.append({"rel": e.rel, "input": e.input, "why": "no record"})
        elif rec.status in FINISHED and not (rec.output and (rec.output in present if is_url(rec.output)
                                                                        else Path(rec.output).exists())):
            unaccounted.append({"rel": e.rel, "input": e.input, "why": f"{rec.status} but output missing"})
    counts = {s: sum(1 for e in entries if e.rel in final and final[e.rel].status == s)
              for s in STATUSES}
    return {"manifest_entries": len(entries), **counts, "unaccounted": unaccounted, "ok": not unaccounted}


__all__ = ["HASH_THREADS", "ManifestEntry", "auto_shard_size", "build_manifest", "content_hash", "make_shards",
           "manifest_path", "reconcile"]
