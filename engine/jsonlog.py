"""Append-only JSON-lines logs that survive a killed run: the report's records and the done-ledger.

A ``JsonLog`` writes one JSON object per line. On a local disk it appends to one file through
an ``O_APPEND`` descriptor, one ``write`` per line, so every line handed to ``add`` is in the
kernel's hands before ``add`` returns (a SIGKILL loses nothing that was added; a line cut short
by a full disk is ended with a newline before the next one, and readers skip it). Object stores
cannot append, so there the lines are buffered and written as separate part objects below a
prefix, named ``<run>-<seq>.jsonl`` (sorted names are chronological), each one PUT, flushed
every ``part_records`` lines or ``part_seconds`` seconds and at ``close``. ``read_lines``
streams the objects back from either form; memory never holds more than one part.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

from .storage import URL, Storage, is_url, location

log = logging.getLogger(__name__)


class JsonLog:
    """One writer of an append-only log: ``local`` file, or ``parts`` prefix on an object store."""

    def __init__(self, target: Path | URL, run_id: str, storage: Storage | None = None, part_records: int = 64,
                 part_seconds: float = 10.0) -> None:
        self.target, self.run_id = location(target), run_id
        self.storage = storage or Storage()
        self.part_records, self.part_seconds = part_records, part_seconds
        self.buffer: list[str] = []
        self.first_buffered = 0.0
        self.seq = 0
        self.fd: int | None = None
        self.broken = False  # the last local write was cut short: start the next line on a new one
        self.errors = 0

    @property
    def remote(self) -> bool:
        return is_url(self.target)

    def _open(self) -> int:
        if self.fd is None:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(self.fd).st_size
            if size:  # a killed writer may have left half a line: never glue ours onto it
                with open(self.target, "rb") as fh:
                    fh.seek(size - 1)
                    self.broken = fh.read(1) != b"\n"
        return self.fd

    def add(self, obj: dict) -> None:
        line = json.dumps(obj, separators=(",", ":"), default=str) + "\n"
        if self.remote:
            if not self.buffer:
                self.first_buffered = time.monotonic()
            self.buffer.append(line)
            if len(self.buffer) >= self.part_records or time.monotonic() - self.first_buffered >= self.part_seconds:
                self.flush()
            return
        data = (("\n" + line) if self.broken else line).encode()
        try:
            written = os.write(self._open(), data)
            self.broken = written < len(data)
        except OSError as exc:  # a full disk must not take the job down; the line is lost, said once
            self.broken = True
            self._error(exc)

    def flush(self) -> None:
        """Object stores: write the buffered lines as the next part (local lines are already written)."""
        if not self.remote or not self.buffer:
            return
        body, self.buffer = "".join(self.buffer), []
        part = self.target / f"{self.run_id}-{self.seq:06d}.jsonl"
        self.seq += 1
        try:
            self.storage.write_bytes(part, body, fsync=False)
        except OSError as exc:
            self._error(exc)

    def _error(self, exc: OSError) -> None:
        self.errors += 1
        if self.errors == 1:
            log.error("cannot write %s (%s); its lines are lost until writes succeed again", self.target, exc)

    def close(self) -> None:
        self.flush()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def part_names(target: URL, storage: Storage, listing: Iterable[str] | None = None) -> list[str]:
    """The part objects below ``target`` in order (from ``listing`` if given: no extra request)."""
    prefix = str(target).rstrip("/") + "/"
    names = listing if listing is not None else (str(u) for u in storage.find(target))
    return sorted(n for n in names if n.startswith(prefix) and n.endswith(".jsonl"))


def read_lines(target: Path | URL, storage: Storage | None = None, listing: Iterable[str] | None = None,
               ) -> Iterator[dict]:
    """Every parseable line of a log, oldest first (half-written lines of a killed run are skipped)."""
    target, storage = location(target), storage or Storage()
    if is_url(target):
        sources = (storage.read_bytes(p) for p in part_names(target, storage, listing))
        chunks = (line for body in sources for line in body.splitlines())
    else:
        if not target.exists():
            return
        chunks = open(target, "rb")
    try:
        for line in chunks:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj
    finally:
        if hasattr(chunks, "close"):
            chunks.close()


__all__ = ["JsonLog", "part_names", "read_lines"]
