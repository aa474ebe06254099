"""Where a job's files live: local paths or fsspec URLs (``s3://``, ``gs://``, ``file://``, ...).

``location(x)`` turns an input/output string into a ``Path`` (plain paths and ``file://``)
or a ``URL`` (an object-store path with the bits of pathlib the job uses, no I/O). A
``Storage`` does the I/O for both: on a ``Path`` exactly what the local code always did
(atomic rename writes via ``engine.atomic``); on a ``URL`` through the fsspec filesystem
of its protocol, built from the standard credential chain (for S3: environment, profile,
instance role, ``AWS_ENDPOINT_URL``) plus the job file's ``[storage]`` options. Object
writes are one PUT (atomic by construction, no temporaries); reads stream. Transient
errors (throttling, 5xx, connection resets, timeouts) are retried with exponential
backoff and jitter; permanent ones (missing key, access denied) are raised at once.
"""
from __future__ import annotations

import errno
import io
import logging
import os
import random
import time
from pathlib import Path
from typing import Callable

from .atomic import TMP_SUFFIX, atomic_write
from .urls import URL, is_url, location

log = logging.getLogger(__name__)

_EXTRAS = {"s3": "dreamfleet[s3]", "s3a": "dreamfleet[s3]", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
           "abfs": "adlfs"}
_BUCKETED = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss"}  # first path part is a bucket/container
_TRANSIENT_ERRNOS = {errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
                     errno.ECONNREFUSED, errno.EPIPE, getattr(errno, "EREMOTEIO", errno.EIO)}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "TooManyRequests", "RequestLimitExceeded"}
_TRANSIENT_TYPES = {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
                    "ClientConnectionError", "ServerDisconnectedError", "ClientPayloadError", "IncompleteRead",
                    "ResponseStreamingError", "FSTimeoutError"}


class StorageAccessError(ValueError):
    """A location that cannot be used at all (missing bucket, refused credentials): a usage error, exit 2."""


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: throttling, 5xx, connection resets and timeouts; never a missing key or a refusal."""
    if isinstance(exc, (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)):
        return False
    for e in (exc, exc.__cause__):
        if e is None:
            continue
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        if _TRANSIENT_TYPES & {t.__name__ for t in type(e).__mro__}:
            return True
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            err = response.get("Error", {})
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if err.get("Code") in _TRANSIENT_CODES or int(status) >= 500 or int(status) == 429:
                return True
    return False


class Storage:
    """I/O on ``Path`` (local, as always) and ``URL`` (fsspec) locations, with retries for the latter.

    ``options``: fsspec keyword arguments; plain keys apply to every protocol, a sub-table named
    after a protocol (``{"s3": {...}}``) to that protocol only (the job file's ``[storage]``).
    """

    def __init__(self, options: dict | None = None, retries: int = 5, backoff: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = dict(options or {})
        self.retries, self.backoff, self.sleep = retries, backoff, sleep
        self._fs: dict[str, object] = {}

    @classmethod
    def for_config(cls, cfg) -> Storage:
        return cls(getattr(cfg, "storage_options", None))

    def __getstate__(self) -> dict:  # filesystems hold event loops and sockets: rebuilt where unpickled
        return dict(self.__dict__, _fs={}, sleep=time.sleep)

    # ---- filesystems and retries
    def fs(self, url: URL):
        if url.protocol not in self._fs:
            import fsspec

            kwargs = {k: v for k, v in self.options.items() if not isinstance(v, dict)}
            kwargs.update(self.options.get(url.protocol, {}))
            kwargs.setdefault("use_listings_cache", False)  # other processes write here: never trust a stale listing
            try:
                cls = fsspec.get_filesystem_class(url.protocol)
            except ImportError as exc:
                need = _EXTRAS.get(url.protocol, f"the fsspec implementation for {url.protocol}://")
                raise ImportError(f"{url}: {url.protocol}:// locations need the optional package {need} "
                                  f"(pip install '{need}'): {exc}") from None
            except ValueError as exc:
                raise ValueError(f"{url}: unknown storage protocol {url.protocol!r} ({exc})") from None
            self._fs[url.protocol] = cls(skip_instance_cache=True, **kwargs)
        return self._fs[url.protocol]

    def call(self, what: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)``, retried with exponential backoff + jitter while errors are transient."""
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt == self.retries or not is_transient(exc):
                    raise
                delay = min(self.backoff * 2 ** attempt, 10.0) * (0.5 + random.random())
                log.warning("%s: transient error (%s: %s); retry %d of %d in %.2fs", what, type(exc).__name__,
                            exc, attempt + 1, self.retries, delay)
                self.sleep(delay)

    # ---- queries
    def exists(self, p) -> bool:
        p = location(p)
        if isinstance(p, Path):
            return p.exists()
        return self.call(f"exists {p}", self.fs(p).exists, p.path)

    def isdir(self, p) -> bool:
        p = location(p)
        if isinstance(p, Path):
            return p.is_dir()
        return self.call(f"isdir {p}", self.fs(p).isdir, p.path)

    def isfile(self, p) -> bool:
        p = location(p)
        if isinstance(p, Path):
            return p.is_file()
        return self.call(f"isfile {p}", self.fs(p).isfile, p.path)

    def stat(self, p) -> tuple[int, int, str | None]:
        """(size, mtime in ns, ETag or None); raises OSError (FileNotFoundError) if missing."""
        p = location(p)
        if isinstance(p, Path):
            st = os.stat(p)
            return st.st_size, st.st_mtime_ns, None
        info = self.call(f"stat {p}", self.fs(p).info, p.path)
        modified = info.get("LastModified") or info.get("mtime") or info.get("updated") or 0
        mtime = modified.timestamp() if hasattr(modified, "timestamp") else float(modified)
        etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
        return int(info.get("size") or 0), int(mtime * 1e9), str(etag).strip('"') if etag else None

    def find(self, prefix: URL) -> list[URL]:
        """Every object below ``prefix`` (recursive), as URLs; [] when there is none."""
        fs = self.fs(prefix)
        try:
            found = self.call(f"list {prefix}", fs.find, prefix.path)
        except FileNotFoundError:
            return []
        return [URL(f"{prefix.protocol}://{k}") for k in sorted(found)]

    def glob(self, pattern: str) -> list[URL]:
        u = URL(pattern)
        return [URL(f"{u.protocol}://{k}") for k in sorted(self.call(f"glob {u}", self.fs(u).glob, u.path))]

    def existing(self, paths: list[str]) -> set[str]:
        """Which of ``paths`` exist; object-store paths are answered from one listing of their common prefix."""
        local = {p for p in paths if not is_url(p) and Path(p).exists()}
        by_protocol: dict[str, list[URL]] = {}
        for p in paths:
            if is_url(p):
                u = URL(p)
                by_protocol.setdefault(u.protocol, []).append(u)
        for proto, urls in by_protocol.items():
            common = os.path.commonpath([u.parent.path for u in urls])
            found = {str(u) for u in self.find(URL(f"{proto}://{common}"))}
            local |= {str(u) for u in urls if str(u) in found}
        return local

    # ---- reads and writes
    def open_read(self, p, block_size: int = 4 << 20):
        """A binary stream (for the decoder); the caller closes it.

        An object is read with one ranged GET of ``block_size`` bytes: a smaller object is then
        complete in memory (one request, no HEAD); a larger one is streamed block by block.
        """
        p = location(p)
        if isinstance(p, Path):
            return open(p, "rb")
        fs = self.fs(p)
        first = self.call(f"read {p}", fs.cat_file, p.path, start=0, end=block_size)
        if len(first) < block_size:
            return io.BytesIO(first)
        return self.call(f"open {p}", fs.open, p.path, "rb", block_size=block_size)

    def read_bytes(self, p) -> bytes:
        p = location(p)
        if isinstance(p, Path):
            return p.read_bytes()
        return self.call(f"read {p}", self.fs(p).cat_file, p.path)

    def write_bytes(self, p, data: bytes | str, fsync: bool = True, **put_kwargs) -> list:
        """Local: temporary + rename (``engine.atomic``). Object store: one PUT, nothing else to clean.

        Returns the written file's stamp for the done-ledger: [size, mtime_ns] locally, [size, ETag] on a store."""
        p = location(p)
        if isinstance(p, Path):
            atomic_write(p, data, fsync=fsync)
            st = os.stat(p)
            return [st.st_size, st.st_mtime_ns]
        body = data.encode() if isinstance(data, str) else bytes(data)
        out = self.call(f"write {p}", self.fs(p).pipe_file, p.path, body, **put_kwargs)
        etag = out.get("ETag") if isinstance(out, dict) else None
        return [len(body), str(etag).strip('"') if etag else None]

    def write_stream(self, p, writer: Callable) -> None:
        """``writer(binary file)`` streams a large file: local temporary + rename, or a multipart upload."""
        p = location(p)
        if isinstance(p, Path):
            atomic_write(p, writer, fsync=False)
            return
        with self.call(f"open {p}", self.fs(p).open, p.path, "wb") as fh:
            writer(fh)

    def listing(self, prefix: URL) -> dict[str, list]:
        """Every object below ``prefix`` with its stamp, from one listing: {url: [size, ETag]}."""
        fs = self.fs(prefix)
        try:
            found = self.call(f"list {prefix}", fs.find, prefix.path, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for key, info in found.items():
            etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
            out[str(URL(f"{prefix.protocol}://{key}"))] = [int(info.get("size") or 0), str(etag).strip('"') if etag else None]
        return out

    def delete(self, p) -> None:
        p = location(p)
        if isinstance(p, Path):
            p.unlink(missing_ok=True)
            return
        try:
            self.call(f"delete {p}", self.fs(p).rm_file, p.path)
        except FileNotFoundError:
            pass

    def remove_temporaries(self, root: URL) -> int:
        """Delete ``*.dreamfleet-tmp`` objects below ``root`` (dreamfleet never writes any to object stores)."""
        stale = [u for u in self.find(root) if u.name.endswith(TMP_SUFFIX)]
        for u in stale:
            self.delete(u)
        return len(stale)

    def check_access(self, p, role: str) -> None:
        """Raise StorageAccessError with a clear message when ``p``'s bucket is missing or access is refused."""
        p = location(p)
        if isinstance(p, Path) or p.protocol not in _BUCKETED:
            return
        bucket = URL(f"{p.protocol}://{p.bucket}")
        try:
            self.call(f"check {bucket}", self.fs(p).info, bucket.path)
        except FileNotFoundError as exc:
            raise StorageAccessError(f"{role} {p}: bucket {p.bucket!r} does not exist ({exc}); create it or check "
                                     "the name and the endpoint (AWS_ENDPOINT_URL / [storage] endpoint_url)") from None
        except PermissionError as exc:
            raise StorageAccessError(f"{role} {p}: access to bucket {p.bucket!r} was refused ({exc}); check the "
                                     "credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE / instance role / [storage] "
                                     "options) and the IAM permissions listed in the README") from None
        except OSError as exc:
            raise StorageAccessError(f"{role} {p}: cannot reach bucket {p.bucket!r}: {exc}") from None


__all__ = ["URL", "Storage", "StorageAccessError", "is_transient", "is_url", "location"]
