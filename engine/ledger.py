"""The done-ledger: every output as it lands, so a rerun decides "skip" without reading outputs.

One JSON line per output in ``OUT/.dreamfleet/ledger.jsonl`` (object stores: atomic part
objects below ``OUT/.dreamfleet/ledger/``, see ``engine.jsonlog``):
``{"o": name below OUT, "n": size, "t": mtime_ns (local) or ETag (object store), "h": param hash}``.
Lines come from the records of written outputs (``ImageRecord.output_stamp``, taken from the
write itself) and of outputs a rerun had to probe. A rerun loads the lines of its own
parameter hash (the latest per name wins) and skips an output when the listing's size and
stamp equal the ledger's. Anything else (no line: written by an older version or lost with
a killed run's last part; a different size, mtime or ETag: replaced by hand) is probed as
before, by reading the hash embedded in the output. A deleted output is simply not listed.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from .jsonlog import JsonLog, read_lines
from .report import ImageRecord
from .storage import Storage, is_url, location
from .vocabulary import LEDGER_NAME, LEDGER_PARTS_NAME, STATE_DIR

log = logging.getLogger(__name__)

PART_RECORDS, PART_SECONDS = 1000, 60.0  # object stores: a lost part only means a few outputs probed again


class Ledger:
    """Reads and appends one output folder's done-ledger."""

    def __init__(self, out_dir, param_hash: str, run_id: str, storage: Storage | None = None) -> None:
        self.out_dir, self.param_hash = location(out_dir), param_hash
        self.storage = storage or Storage()
        self.target = self.out_dir / STATE_DIR / (LEDGER_PARTS_NAME if is_url(self.out_dir) else LEDGER_NAME)
        self._prefix = len(str(self.out_dir).rstrip("/")) + 1
        self.log = JsonLog(self.target, run_id, self.storage, PART_RECORDS, PART_SECONDS)
        self.added = 0

    def name(self, output) -> str:
        """An output's name in the ledger: its path below OUT."""
        return str(output)[self._prefix:]

    def load(self, listing: Iterable[str] | None = None) -> dict[str, tuple]:
        """{name: (size, stamp)} vouched for with this job's parameter hash (``listing``: the store's, if any)."""
        entries: dict[str, tuple] = {}
        for line in read_lines(self.target, self.storage, listing):
            name, size, stamp = line.get("o"), line.get("n"), line.get("t")
            if not isinstance(name, str):
                continue
            if line.get("h") == self.param_hash and size is not None and stamp is not None:
                entries[name] = (size, stamp)
            else:  # a later line with other parameters takes an earlier vouch back
                entries.pop(name, None)
        log.info("done-ledger: %d outputs vouched for", len(entries))
        return entries

    def record(self, rec: ImageRecord) -> None:
        """Note a record's output if it carries the stamp of a write (or of a probe)."""
        stamp = rec.output_stamp
        if rec.output and stamp and stamp[1] is not None and rec.status in ("done", "skipped"):
            self.log.add({"o": self.name(rec.output), "n": stamp[0], "t": stamp[1], "h": self.param_hash})
            self.added += 1

    def close(self) -> None:
        self.log.close()


def vouched(entries: dict[str, tuple], name: str, stamp: list | None) -> bool:
    """True when ``stamp`` (from the listing or a stat) is exactly what the ledger recorded for ``name``."""
    return stamp is not None and stamp[1] is not None and entries.get(name) == tuple(stamp)


__all__ = ["Ledger", "vouched"]
