"""Durable files: the one atomic-write helper, the one file digest, and stale-temporary cleanup.

Every file dreamfleet writes (dreams, the report, the manifest, the job file, the contact
sheet, exported graphs, engine caches) goes through :func:`atomic_write`: the bytes land in a
temporary beside the target, named ``.<name>.<random>.dreamfleet-tmp``, and are renamed over
it, so a reader sees the old file or the new one, never half of one. A killed run can leave
only such temporaries, and :func:`clean_stale_temporaries` removes them all.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

TMP_SUFFIX = ".dreamfleet-tmp"

Writer = Callable[[BinaryIO], None]


def temporary_for(path: Path) -> Path:
    """A unique temporary name beside ``path`` that :func:`clean_stale_temporaries` recognizes."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def atomic_write(path: str | Path, data: bytes | str | Writer, fsync: bool = True,
                 verify: Callable[[Path], None] | None = None) -> Path:
    """Write ``data`` (bytes, text, or a callable that writes to a binary file) to ``path`` atomically.

    ``fsync`` makes the content durable before the rename (the dreams); bookkeeping files that
    are rewritten often may skip it. ``verify(temporary)`` runs on the complete temporary before
    the rename: if it raises, ``path`` is left as it was. The parent folder is created. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_for(path)
    try:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20, **params) -> str:
    """Hex digest of a file's bytes, read in chunks (``algorithm``: any hashlib name; ``params``: its options,
    e.g. ``digest_size=16`` for blake2b)."""
    h = hashlib.new(algorithm, **params)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def clean_stale_temporaries(root: str | Path) -> int:
    """Remove every temporary a killed run left below ``root``; returns how many."""
    root, n = Path(root), 0
    if root.is_dir():
        for tmp in root.rglob(f"*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            n += 1
    return n


__all__ = ["TMP_SUFFIX", "atomic_write", "clean_stale_temporaries", "file_digest", "temporary_for"]
