"""What the actor pool does with a shard's outcome: final records, retries, quarantine.

``ShardOutcomes`` is the half of ``cluster.pool.WorkerPool`` that turns results into records: a
shard's records are finalized once per image; a failed shard is split in halves and requeued (outputs
its worker wrote before dying are kept and recorded as done); an image failing alone is retried up to
``retries`` times, then quarantined with its reason; a stopping job records its queued images as not
attempted. It uses the pool's ``cfg``, ``storage``, ``started``, ``queue``, ``shard_ids``, ``policy``,
``final``, ``stats``, ``opts`` and ``on_record``.
"""
from __future__ import annotations

import logging
import os
import time

from dreamfleet.engine.report import ImageRecord
from dreamfleet.engine.runner import WorkItem
from dreamfleet.engine.storage import is_url
from dreamfleet.engine.writeguard import not_attempted

from .segments import item_for
from .worker import ShardResult

log = logging.getLogger(__name__)


class ShardOutcomes:
    """Mixin of ``WorkerPool``: records, retries and quarantine from shard results and failures."""

    def _finalize(self, rec: ImageRecord) -> None:
        if rec.rel in self.final:
            return
        self.final.add(rec.rel)
        rec.attempts = max(rec.attempts, self.policy.attempts(rec.rel, rec.status == "done"))
        self.on_record(rec)

    def _written_this_run(self, item: WorkItem) -> bool:
        try:
            mtime = self.storage.stat(item.output)[1] / 1e9 if is_url(item.output) else os.stat(item.output).st_mtime
        except OSError:
            return False
        return not self.cfg.overwrite or mtime >= self.started - 1.0

    def _drain(self, why: str) -> None:
        """The job stops: every queued image is recorded as not attempted."""
        while self.queue:
            _, items = self.queue.popleft()
            for item in items:
                self._finalize(not_attempted(item.path, item.rel, why, None, item.hw))

    def _shard_done(self, result: ShardResult, items: list[WorkItem]) -> None:
        self.last_progress = time.perf_counter()
        w = self.stats.workers[result.worker]
        w["shards"] += 1
        w["busy_seconds"] += result.seconds
        for rec in result.records:
            consumed, follow = self.segments.note(rec, items)  # segment records are not the video's record
            self.queue.extend((next(self.shard_ids), [item]) for item in follow)
            if consumed:
                continue
            item = item_for(rec, items) if rec.status == "failed" and rec.retryable else None
            if item is not None:
                self._charge(item, rec.reason, rec)
                continue
            w[rec.status] = w.get(rec.status, 0) + 1
            self._finalize(rec)

    def _shard_failed(self, items: list[WorkItem], reason: str) -> None:
        rest = []
        for item in items:
            if self._written_this_run(item):  # written before the worker died: keep it, don't redo it
                self._finalize(ImageRecord(item.path, item.rel, "done", output=item.output, shape=list(item.hw),
                                           worker="recovered"))
            else:
                rest.append(item)
        if len(rest) > 1:
            halves = self.policy.split(rest)
            self.stats.retries += 1
            log.warning("%s; retrying its %d images as %d + %d", reason, len(rest), *map(len, halves))
            for half in halves:
                self.queue.append((next(self.shard_ids), half))
        elif rest:
            self._charge(rest[0], reason, None)

    def _charge(self, item: WorkItem, reason: str, rec: ImageRecord | None) -> None:
        """One more failure for ``item`` alone: retry it, or quarantine it once over budget."""
        decision = self.policy.charge(item.rel)
        n = decision.failures
        if decision.retry:
            self.stats.retries += 1
            self.queue.append((next(self.shard_ids), [item]))
            log.info("retrying %s (failure %d of %d allowed): %s", item.rel, n, self.opts.retries, reason)
            return
        why = f"quarantined after {n} failed attempts: {reason}"
        self.stats.quarantined.append({"rel": item.rel, "input": item.path, "attempts": n, "reason": reason})
        log.error("%s: %s", item.rel, why)
        self._finalize(ImageRecord(item.path, item.rel, "failed", reason=why, shape=list(item.hw) or None,
                                   worker=rec.worker if rec else None, attempts=n))


__all__ = ["ShardOutcomes"]
