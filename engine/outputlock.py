"""The output folder's lock: one run writes a folder at a time.

A local folder is locked with ``flock`` on ``OUT/.dreamfleet/lock`` (released by the kernel
if the run dies); an object-store location with a lease object (``engine.lease``).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .lease import LeaseHeld, LeaseLock
from .storage import URL, Storage, is_url, location
from .vocabulary import LOCK_NAME, STATE_DIR


class JobLocked(RuntimeError):
    """Another run holds the output folder."""


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


__all__ = ["JobLocked", "OutputLock", "output_lock"]
