"""Benchmark result rows: one JSON object per line, appended to a ``.jsonl`` file under ``results/``.

Every benchmark writes its rows through :func:`append_rows`, so the format (one line per row,
non-JSON values as strings) and the folder creation are the same everywhere.
"""
from __future__ import annotations

import json
from pathlib import Path


def append_rows(path: str | Path, rows: list[dict], sort_keys: bool = False) -> Path:
    """Append ``rows`` to ``path`` (created with its folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=str, sort_keys=sort_keys) + "\n")
    return path


__all__ = ["append_rows"]
