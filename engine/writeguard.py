"""The stop rule for persistent write errors: a full disk stops the job instead of burning device time.

``WriteGuard`` wraps the runner's ``Storage``: every output write goes through it. A failure
is classified (``persistent_cause``): disk full (ENOSPC), read-only filesystem (EROFS), quota
exceeded (EDQUOT), permission denied on the output folder (EACCES / EPERM), a missing bucket
or access denied on the output prefix. After ``STOP_AFTER`` such failures *in a row with the
same cause* (any successful write resets the count; transient and other errors do not
count) the guard trips: later writes are refused without touching the disk, the runner stops
decoding and dreaming, and every image not attempted is recorded with the cause
(``not_attempted``). Three, so one file racing a cleanup does not stop a job, yet at batch
size >= 4 the job stops inside the first batch of failures (plus the writes already on the
writer threads).
"""
from __future__ import annotations

import errno
import logging
import threading

from .report import ImageRecord
from .storage import Storage
from .vocabulary import NOT_ATTEMPTED

log = logging.getLogger(__name__)

STOP_AFTER = 3  # consecutive same-cause persistent write failures that stop the job

# cause -> (what is wrong, what to do); the one line is "<what>: N images not attempted; <advice>"
CAUSES = {
    "disk_full": ("the output disk is full", "free space and rerun"),
    "read_only": ("the output filesystem is read-only", "make it writable or choose another -o, and rerun"),
    "quota": ("the output disk quota is exceeded", "free space or raise the quota, and rerun"),
    "permission": ("writing to the output folder is not permitted", "fix its permissions and rerun"),
    "no_bucket": ("the output bucket does not exist", "create it (or fix -o) and rerun"),
    "access_denied": ("access to the output location is denied", "fix the credentials or the bucket policy and rerun"),
}
_ERRNOS = {errno.ENOSPC: "disk_full", errno.EROFS: "read_only", errno.EDQUOT: "quota", errno.EACCES: "permission",
           errno.EPERM: "permission"}


def persistent_cause(exc: BaseException) -> str | None:
    """The CAUSES key of a write error that will not go away by retrying, or None."""
    for e in (exc, exc.__cause__, exc.__context__):
        if e is None:
            continue
        if isinstance(e, OSError) and e.errno in _ERRNOS:
            return _ERRNOS[e.errno]
        text = str(e)
        if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
            return "no_bucket"
        if "AccessDenied" in text or "Access Denied" in text or isinstance(e, PermissionError):
            return "access_denied"
    return None


def stop_message(cause: str, not_attempted: int) -> str:
    what, advice = CAUSES[cause]
    return f"{what}: {not_attempted} images not attempted; {advice}"


class WritesStopped(OSError):
    """Raised instead of writing once the guard has tripped."""


class WriteGuard:
    """A ``Storage`` that counts consecutive persistent write failures and refuses writes once tripped."""

    def __init__(self, storage: Storage, stop_after: int = STOP_AFTER) -> None:
        self.inner, self.stop_after = storage, stop_after
        self.cause: str | None = None  # set when tripped
        self._run: tuple[str | None, int] = (None, 0)  # (cause, consecutive failures)
        self._lock = threading.Lock()  # writer threads report concurrently

    def __getattr__(self, name):  # reads, listings, deletes: the wrapped storage
        return getattr(self.inner, name)

    def __getstate__(self) -> dict:
        return {"inner": self.inner, "stop_after": self.stop_after, "cause": None, "_run": (None, 0)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def reason(self) -> str | None:
        """The reason recorded for images not attempted, once tripped."""
        return f"{NOT_ATTEMPTED}: {CAUSES[self.cause][0]}" if self.cause else None

    def write_bytes(self, p, data, fsync: bool = True, **kwargs):
        if self.cause:
            raise WritesStopped(self.reason)
        try:
            stamp = self.inner.write_bytes(p, data, fsync=fsync, **kwargs)
        except Exception as exc:
            self._failed(persistent_cause(exc), exc)
            raise
        with self._lock:
            self._run = (None, 0)
        return stamp

    def _failed(self, cause: str | None, exc: BaseException) -> None:
        with self._lock:
            last, n = self._run
            self._run = (cause, n + 1 if cause and cause == last else 1)
            if cause and self._run[1] >= self.stop_after and not self.cause:
                self.cause = cause
                log.error("%s (%s): %d writes in a row failed; stopping the job", CAUSES[cause][0], exc,
                          self._run[1])


def not_attempted(path: str, rel: str, reason: str, worker: str | None = None,
                  hw: tuple[int, int] | None = None) -> ImageRecord:
    """The record of an image a stopped job did not attempt."""
    return ImageRecord(path, rel, "failed", reason=reason, shape=list(hw) if hw else None, worker=worker)


def tripped_cause(reason: str | None) -> str | None:
    """The cause named by a not-attempted reason (a worker's guard tripped), or None."""
    if not reason or NOT_ATTEMPTED not in reason:
        return None
    for cause, (what, _) in CAUSES.items():
        if what in reason:
            return cause
    return None


__all__ = ["CAUSES", "NOT_ATTEMPTED", "STOP_AFTER", "WriteGuard", "WritesStopped", "not_attempted",
           "persistent_cause", "stop_message", "tripped_cause"]
