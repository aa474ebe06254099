"""Live progress of a cluster job: images done / failed / per second, overall and per worker.

On a TTY one status line is redrawn in place on stderr; otherwise a line is logged every
``log_every`` seconds, so a nightly job's log shows how it went.
"""
from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict

log = logging.getLogger(__name__)


class Progress:
    """Counts records as shards come back; ``tick`` draws or logs at most every ``interval`` seconds."""

    def __init__(self, total: int, enabled: bool | None = None, log_every: float = 30.0,
                 stream=None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if enabled is None else bool(enabled)
        self.log_every = log_every
        self.t0 = time.perf_counter()
        self.last_draw = 0.0
        self.done = 0
        self.failed = 0
        self.retries = 0
        self.per_worker: dict[str, dict] = defaultdict(lambda: {"done": 0, "failed": 0})

    def add(self, worker: str, status: str) -> None:
        if status == "done":
            self.done += 1
        elif status == "failed":
            self.failed += 1
        if status in ("done", "failed"):
            self.per_worker[worker][status] += 1

    def retried(self, n: int = 1) -> None:
        self.retries += n

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        workers = " ".join(f"{w}:{c['done']}({c['done'] / elapsed:.2f}/s)" for w, c in sorted(self.per_worker.items()))
        return (f"{self.done + self.failed}/{self.total} images: {self.done} done, {self.failed} failed, "
                f"{self.retries} retries, {self.done / elapsed:.2f} img/s | {workers}")

    def tick(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.tty:
            if force or now - self.last_draw >= 0.5:
                self.stream.write("\r\x1b[2K" + self.line())
                self.stream.flush()
                self.last_draw = now
        elif force or now - self.last_draw >= self.log_every:
            log.info("progress: %s", self.line())
            self.last_draw = now

    def close(self) -> None:
        self.tick(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


__all__ = ["Progress"]
