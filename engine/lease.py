"""The lock of an output location on an object store: a lease object with an owner and an expiry.

Object stores have no flock. A run that writes to ``s3://b/out`` holds the object
``s3://b/out/.dreamfleet/lock``, a small JSON document: owner (pid, host), a random token,
the time it was taken and when it expires. It is taken with a conditional PUT (S3
``If-None-Match: *`` when no lease exists, ``If-Match: <etag>`` to replace an expired one)
and read back, so two runs racing for it cannot both win. A background thread renews it
every third of its lifetime; the run deletes it when it ends. A live lease of another run
refuses the job; a lease left by a killed run is taken over once it has expired (at most
``ttl`` seconds, 60 by default; clocks of the machines involved are assumed to agree to a
few seconds).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid

from .storage import URL, Storage

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0


class LeaseHeld(RuntimeError):
    """Another live run holds the lease."""


class LeaseLock:
    """Context manager holding the lease object ``url`` for the duration of a run."""

    def __init__(self, url: URL, storage: Storage, ttl: float = LEASE_SECONDS, owner: str | None = None) -> None:
        self.url, self.storage, self.ttl = url, storage, float(ttl)
        self.owner = owner or f"pid {os.getpid()} on {os.uname().nodename}"
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _conditional(self) -> bool:
        return self.url.protocol in ("s3", "s3a")

    def _read(self) -> tuple[dict | None, str | None]:
        """(lease document or None, its ETag)."""
        try:
            etag = self.storage.stat(self.url)[2]
            raw = self.storage.read_bytes(self.url)
        except FileNotFoundError:
            return None, None
        try:
            doc = json.loads(raw)
            return (doc if isinstance(doc, dict) else {}), etag
        except ValueError:
            return {}, etag  # unreadable: treated as expired

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "token": self.token, "acquired": now, "expires": now + self.ttl,
                           "ttl": self.ttl}).encode()

    def _put(self, etag: str | None) -> bool:
        """Write our lease only if the object is still what we read; False if someone else won the race."""
        kwargs = {}
        if self._conditional():
            kwargs = {"IfMatch": etag} if etag else {"mode": "create"}
        try:
            self.storage.write_bytes(self.url, self._body(), **kwargs)
        except (FileExistsError, FileNotFoundError):
            return False
        except OSError as exc:
            if "precondition" in str(exc).lower() or "412" in str(exc):
                return False
            raise
        return True

    def __enter__(self) -> LeaseLock:
        for _ in range(5):
            lease, etag = self._read()
            now = time.time()
            if lease and lease.get("token") != self.token and float(lease.get("expires", 0)) > now:
                until = time.strftime("%H:%M:%S", time.localtime(float(lease["expires"])))
                raise LeaseHeld(f"another dreamfleet run ({lease.get('owner', 'unknown')}) holds the lease "
                                f"{self.url} (renewed while it runs; expires {until} if it died); wait for it or "
                                "choose another output location")
            if lease is not None:
                log.warning("taking over the expired or unreadable lease %s (owner %s)", self.url,
                            lease.get("owner", "unknown"))
            if self._put(etag) and (self._read()[0] or {}).get("token") == self.token:
                self._thread = threading.Thread(target=self._renew_loop, name="dreamfleet-lease", daemon=True)
                self._thread.start()
                return self
        raise LeaseHeld(f"could not take the lease {self.url}: other runs keep replacing it")

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                lease, etag = self._read()
                if (lease or {}).get("token") != self.token:
                    log.error("lease %s was taken by %s; another run may now write here", self.url,
                              (lease or {}).get("owner", "nobody"))
                    return
                self._put(etag)
            except Exception as exc:  # a missed renewal is retried at the next tick
                log.warning("renewing lease %s failed: %s", self.url, exc)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            if (self._read()[0] or {}).get("token") == self.token:
                self.storage.delete(self.url)
        except Exception as err:  # the lease then expires on its own
            log.warning("could not release lease %s (%s); it expires in %.0fs", self.url, err, self.ttl)


__all__ = ["LEASE_SECONDS", "LeaseHeld", "LeaseLock"]
