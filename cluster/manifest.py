"""The job manifest: every input of a cluster job, its content hash, and how it is sharded.

The manifest is written to ``OUT/.dreamfleet/manifest.jsonl`` (a header line with the
job's parameter hash, then one line per input: path, relative path, size, content hash,
output path, working shape). A rerun reuses the hashes of inputs whose size and mtime
did not change. On an object store the content hash is the object's ETag (read from the
listing, so the driver never downloads an input) and the manifest is one streamed upload.
The manifest is written as the plan is made (``ManifestWriter``), never held in memory. Shards are lists of work items (paths, never pixels) cut inside one shape
bucket, so each shard is a few full engine batches. ``Reconciler`` checks the
manifest against the final records, counted as they arrive.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path

from dreamfleet.engine import atomic
from dreamfleet.engine.atomic import TMP_SUFFIX, file_digest
from dreamfleet.engine.job import JobPlan
from dreamfleet.engine.report import ImageRecord
from dreamfleet.engine.runner import WorkItem
from dreamfleet.engine.storage import Storage, is_url, location
from dreamfleet.engine.vocabulary import MANIFEST_NAME, STATE_DIR, STATUSES

from .segments import manifest_items

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


def _previous_hashes(path, storage: Storage) -> dict[int, bytes]:
    """{hash((input, size, mtime_ns)): digest} from the last manifest, streamed (compact: ~100 bytes an entry)."""
    known: dict[int, bytes] = {}
    if not storage.exists(path):
        return known
    with storage.open_read(path) as fh:
        fh.readline()  # the header
        for line in fh:
            try:
                e = json.loads(line)
                if e.get("content_hash") and e.get("size") is not None:
                    known[hash((e["input"], e["size"], e["mtime_ns"]))] = e["content_hash"].encode()
            except (ValueError, AttributeError):
                continue
    return known


class ManifestWriter:
    """Streams the manifest: the header, then one line per planned input (hashed on a few threads, in order).

    Lines go to a local temporary as they come (beside the manifest, or in the system temp folder
    for an object store) and land at ``close``: renamed into place, or uploaded as one streamed PUT.
    Nothing per input stays in memory but the previous manifest's compact hash index.
    """

    CHUNK = 512  # inputs hashed at once

    def __init__(self, out_dir, param_hash: str, storage: Storage | None = None) -> None:
        self.storage = storage or Storage()
        self.path = manifest_path(out_dir)
        self.known = _previous_hashes(self.path, self.storage)
        if is_url(self.path):
            fd, tmp = tempfile.mkstemp(suffix=TMP_SUFFIX)
            self.tmp = Path(tmp)
            self.fh = os.fdopen(fd, "w")
        else:
            self.tmp = atomic.temporary_for(self.path)  # (looked up at call time: tests patch it)
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.tmp, "w")
        self.fh.write(json.dumps({"param_hash": param_hash, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
        self.pending: list[tuple] = []
        self.planned: dict[str, int] = {}
        self.entries = 0
        self.t0 = time.perf_counter()
        self.pool = ThreadPoolExecutor(max_workers=HASH_THREADS)

    def add(self, inp: str, rel: str, output: str | None, hw, planned: str) -> None:
        self.pending.append((inp, rel, output, list(hw) if hw else None, planned))
        if len(self.pending) >= self.CHUNK:
            self._drain()

    def add_record(self, rec: ImageRecord) -> None:
        """A planning record (skipped, or failed before dreaming)."""
        self.add(rec.input, rec.rel, rec.output, rec.shape, rec.status)

    def add_todo(self, todo: list[WorkItem]) -> None:
        for item in manifest_items(todo):  # a long video split into segments is one input
            self.add(item.path, item.rel, item.output, item.hw, "todo")

    def _entry(self, job: tuple) -> ManifestEntry:
        inp, rel, output, hw, planned = job
        if is_url(inp):  # size, mtime and ETag from the store: no download on the driver
            try:
                size, mtime_ns, etag = self.storage.stat(inp)
            except OSError:
                return ManifestEntry(rel, inp, None, None, None, output, hw, planned)
            return ManifestEntry(rel, inp, size, mtime_ns, f"etag:{etag}" if etag else None, output, hw, planned)
        try:
            st = os.stat(inp)
        except OSError:
            return ManifestEntry(rel, inp, None, None, None, output, hw, planned)
        known = self.known.get(hash((inp, st.st_size, st.st_mtime_ns)))
        h = known.decode() if known else None
        if h is None:
            try:
                h = content_hash(inp)
            except OSError:
                h = None
        return ManifestEntry(rel, inp, st.st_size, st.st_mtime_ns, h, output, hw, planned)

    def _drain(self) -> None:
        for e in self.pool.map(self._entry, self.pending):  # hashing is I/O bound; keeps order
            self.fh.write(json.dumps(asdict(e)) + "\n")
            self.planned[e.planned] = self.planned.get(e.planned, 0) + 1
            self.entries += 1
        self.pending = []

    def close(self) -> int:
        """Land the manifest; returns its number of entries."""
        try:
            self._drain()
            self.fh.close()
            if is_url(self.path):
                with open(self.tmp, "rb") as src:
                    self.storage.write_stream(self.path, lambda dst: shutil.copyfileobj(src, dst, 1 << 20))
            else:
                os.replace(self.tmp, self.path)
        finally:
            self.pool.shutdown()
            self.fh.close()
            self.tmp.unlink(missing_ok=True)
        self.known = {}
        log.info("manifest: %d inputs (%d to dream) hashed in %.2fs -> %s", self.entries, self.planned.get("todo", 0),
                 time.perf_counter() - self.t0, self.path)
        return self.entries


def build_manifest(plan: JobPlan, out_dir, param_hash: str, storage: Storage | None = None) -> int:
    """The manifest of a plan whose planning records are in ``plan.records`` (small jobs, tests)."""
    writer = ManifestWriter(out_dir, param_hash, storage)
    writer.add_todo(plan.todo)
    for rec in plan.records:
        writer.add_record(rec)
    return writer.close()


def read_manifest(out_dir, storage: Storage | None = None):
    """Stream the manifest's entries."""
    storage = storage or Storage()
    with storage.open_read(manifest_path(out_dir)) as fh:
        fh.readline()
        for line in fh:
            yield ManifestEntry(**json.loads(line))


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


class Reconciler:
    """Every manifest entry must end done/skipped with its output in place, or recorded as failed.

    Counted as records arrive (flat in the job's size): a done record carries the stamp its write
    returned, a skipped one was checked at planning; only a done record without a stamp (an output a
    dead worker wrote, recovered by the pool) is looked at on the store. Which entries lack a record
    is worked out (from the manifest and this run's records) only when the counts disagree.
    """

    def __init__(self, storage: Storage | None = None) -> None:
        self.storage = storage or Storage()
        self.counts = dict.fromkeys(STATUSES, 0)
        self.missing: list[dict] = []

    def add(self, rec: ImageRecord) -> None:
        self.counts[rec.status] += 1
        if rec.status == "done" and not rec.output_stamp and not (rec.output and self.storage.exists(rec.output)):
            self.missing.append({"rel": rec.rel, "input": rec.input, "why": "done but output missing"})

    def result(self, entries: int, out_dir=None, run_records=None) -> dict:
        """``run_records``: a callable streaming this run's records, read only when some entry has none."""
        unaccounted = list(self.missing[:100])
        lacking = entries - sum(self.counts.values())
        if lacking > 0 and run_records is not None and out_dir is not None:
            seen = {r.rel for r in run_records()}  # the error path only: a set of this run's names
            unaccounted += [{"rel": e.rel, "input": e.input, "why": "no record"}
                            for e in read_manifest(out_dir, self.storage) if e.rel not in seen][:100]
        elif lacking > 0:
            unaccounted.append({"rel": "?", "input": "?", "why": f"{lacking} manifest entries without a record"})
        return {"manifest_entries": entries, **self.counts, "unaccounted": unaccounted, "ok": not unaccounted}


__all__ = ["HASH_THREADS", "ManifestEntry", "ManifestWriter", "Reconciler", "auto_shard_size", "build_manifest",
           "content_hash", "make_shards", "manifest_path", "read_manifest"]
