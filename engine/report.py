"""Per-image records and the JSON run report written into the output folder."""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .storage import Storage, location
from .vocabulary import REPORT_NAME, STATUSES


@dataclass
class ImageRecord:
    input: str
    rel: str
    status: str  # done | skipped | failed
    output: str | None = None
    reason: str | None = None
    shape: list[int] | None = None  # working [H, W]
    timings: dict = field(default_factory=dict)  # seconds: load, dream (per image share of its batch), save
    worker: str | None = None
    attempts: int = 1
    retryable: bool = False  # failed in the model or on write (worth another try), not an unreadable input
    video: dict | None = None  # a video's facts: frames, fps, duration, frames/s, encoding, audio (engine/video)


def environment() -> dict:
    """Versions and hardware facts that make a figure reproducible."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


class RunReport:
    """Collects records; ``write`` dumps totals + records atomically as JSON."""

    def __init__(self, config: dict, out_dir, command: str = "dream", storage: Storage | None = None) -> None:
        self.config, self.out_dir, self.command = config, location(out_dir), command  # Path or object-store URL
        self.storage = storage or Storage()
        self.records: list[ImageRecord] = []
        self.started = time.time()
        self.t0 = time.perf_counter()
        self.work_seconds: float | None = None  # time spent after model build / warm-up
        self.extra: dict = {}

    def add(self, rec: ImageRecord) -> None:
        if rec.status not in STATUSES:
            raise ValueError(f"unknown status {rec.status!r}; valid: {', '.join(STATUSES)}")
        self.records.append(rec)

    def counts(self) -> dict:
        return {s: sum(1 for r in self.records if r.status == s) for s in STATUSES}

    def totals(self) -> dict:
        wall = time.perf_counter() - self.t0
        c = self.counts()
        work = self.work_seconds or wall
        return {
            "images": len(self.records), **c, "wall_seconds": round(wall, 3), "work_seconds": round(work, 3),
            "images_per_s": round(c["done"] / wall, 4) if wall > 0 else None,
            "images_per_s_steady": round(c["done"] / work, 4) if work > 0 else None,
        }

    def to_dict(self) -> dict:
        return {"command": self.command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                "totals": self.totals(), "config": self.config, "environment": environment(), **self.extra,
                "images": [asdict(r) for r in self.records]}

    def write(self, path: Path | None = None) -> Path:
        path = location(path or self.out_dir / REPORT_NAME)
        self.storage.write_bytes(path, json.dumps(self.to_dict(), indent=2, default=str), fsync=False)  # local: atomic
        return path

    def summary(self) -> str:
        t = self.totals()
        return (f"{t['done']} dreamed, {t['skipped']} skipped, {t['failed']} failed in {t['wall_seconds']:.1f}s: "
                f"{t['images_per_s'] or 0:.3f} images/s overall, {t['images_per_s_steady'] or 0:.3f} images/s steady")


__all__ = ["REPORT_NAME", "STATUSES", "ImageRecord", "RunReport", "environment"]
