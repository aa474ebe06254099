"""A video's resumable state under ``OUT/.dreamfleet/video/<param hash>/<rel>/``: dreamed frames and the chain.

Each dreamed frame is written atomically (``engine.atomic``, renamed into place) as it finishes, a
lossless PNG (zlib level 1: fast, still lossless) named by its frame index, presentation timestamp and
duration (``000042.42042.1001.png``; ``x``: no duration), so the final encode needs no second decode
and keeps the source timing exactly. Frames are not fsynced one by one: a frame after the newest
checkpoint is dreamed again on resume anyway.

A checkpoint is the chain's state after frame t, the previous dream as float32 ``[3,H,W]`` pixels
(``chain.000042.npy``; its source frame is decoded again on resume), stored after every
``CHAIN_EVERY``-th frame (``checkpoint_due``) and after a video's last frame. A killed job resumes at
``resume_point``: the frame after the newest chain state whose frames are all on disk, so the
resumed video equals an uninterrupted one (same initial images, same jitter keys).

What makes that rule hold: a checkpoint is written only once the frames before it are written (the
scheduler waits for their writes). Against a SIGKILL the atomic renames are enough: a frame is on
disk whole or not at all. Against a power loss the checkpoint first fsyncs the frames written since
the previous one and the folder, then writes the chain state with fsync and fsyncs the folder again,
so a chain state that survives has every frame below it; frames after it may be lost or torn, and
they are dreamed again (and replaced) on resume.
"""
from __future__ import annotations

import io
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..storage import is_url, location
from ..vocabulary import STATE_DIR, VIDEO_STATE_DIR

log = logging.getLogger(__name__)

CHAIN_EVERY = 8  # frames between checkpoints (chain state + fsync of the frames before it)

_FRAME = re.compile(r"^(\d+)\.(-?\d+)\.(\d+|x)\.png$")
_CHAIN = re.compile(r"^chain\.(\d+)\.npy$")


def checkpoint_due(index: int) -> bool:
    """Is the chain state after frame ``index`` stored (every ``CHAIN_EVERY``-th frame of the video)?"""
    return (index + 1) % CHAIN_EVERY == 0


def state_root(out_dir, param_hash: str, rel: str) -> Path:
    """Where a video's frames and chain state live: OUT/.dreamfleet/video/<param hash>/<rel>/; for an
    object-store output, the same below the local temporary folder (a rerun on this machine resumes)."""
    import tempfile

    out_dir = location(out_dir)
    if is_url(out_dir):
        base = Path(tempfile.gettempdir()) / "dreamfleet-video" / out_dir.protocol / out_dir.path.strip("/")
    else:
        base = out_dir / STATE_DIR
    return base / VIDEO_STATE_DIR / param_hash / rel


def _fsync(path: Path) -> None:
    """Make a file's (or a folder's) content durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FrameStore:
    """The frames and chain state of one video being dreamed (written from the writer threads)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._unsynced: list[Path] = []  # frames renamed into place since the last checkpoint, not fsynced
        self._chain: Path | None = None  # the newest chain state this run wrote (older ones are removed)

    def frames(self) -> list[tuple[int, int, int | None, Path]]:
        """(index, pts, duration or None, path) of every dreamed frame on disk, in frame order."""
        if not self.root.is_dir():
            return []
        found = [(int(m[1]), int(m[2]), None if m[3] == "x" else int(m[3]), p)
                 for p in self.root.iterdir() if (m := _FRAME.match(p.name))]
        return sorted(found, key=lambda f: f[0])

    def _chains(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        return sorted((int(m[1]), p) for p in self.root.iterdir() if (m := _CHAIN.match(p.name)))

    def resume_point(self, start: int) -> tuple[int, np.ndarray | None]:
        """(first frame to dream, the chain state after the frame before it [3,H,W] float32, or None).

        Only a chain state whose frames ``start..t`` are all on disk counts (a frame missing below it:
        an older state, or the start)."""
        have = {f[0] for f in self.frames()}
        for t, path in reversed(self._chains()):
            if t >= start and all(i in have for i in range(start, t + 1)):
                try:
                    return t + 1, np.load(path)
                except (OSError, ValueError) as exc:  # a damaged state file: try an older one
                    log.warning("chain state %s unreadable (%s); trying an older one", path, exc)
        return start, None

    def save(self, index: int, pts: int, duration: int | None, rgb: np.ndarray, chain: np.ndarray | None = None) -> None:
        """Writer thread: frame ``index`` (uint8 [H,W,3]), renamed into place; with ``chain`` (float32 [3,H,W])
        also the checkpoint after it (the caller has waited for the writes of the frames before it)."""
        import cv2

        ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise OSError(f"cannot encode frame {index} as PNG")
        dur = "x" if duration is None else int(duration)
        path = atomic_write(self.root / f"{index:06d}.{int(pts)}.{dur}.png", png.tobytes(), fsync=False)
        with self._lock:
            self._unsynced.append(path)
        if chain is not None:
            self.checkpoint(index, chain)

    def checkpoint(self, index: int, chain: np.ndarray) -> None:
        """Store the chain state after frame ``index`` durably: the frames written so far are fsynced first."""
        with self._lock:
            pending, self._unsynced = self._unsynced, []
        for path in pending:
            _fsync(path)
        _fsync(self.root)  # the frames' names, before the chain state that vouches for them
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(chain, dtype=np.float32))
        path = atomic_write(self.root / f"chain.{index:06d}.npy", buf.getvalue(), fsync=True)
        _fsync(self.root)
        with self._lock:
            older = [p for t, p in self._chains() if t < index] if self._chain is None else [self._chain]
            self._chain = path  # checkpoints of one video are written in frame order
        for old in older:  # never needed again
            if old != path:
                old.unlink(missing_ok=True)

    @staticmethod
    def read(path: Path) -> np.ndarray:
        """A stored frame as uint8 [H,W,3] RGB."""
        import cv2

        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot read dreamed frame {path}")
        return np.ascontiguousarray(bgr[..., ::-1])

    def remove(self) -> None:
        """Drop the frames and chain state, and the folders left empty above them up to the ``video`` folder."""
        shutil.rmtree(self.root, ignore_errors=True)
        parents = list(self.root.parents)
        top = next((i for i, p in enumerate(parents) if p.name == VIDEO_STATE_DIR), -1)
        for parent in parents[:top + 1]:
            try:
                parent.rmdir()
            except OSError:  # not empty: another video's state
                break


def save_frame(store: FrameStore, frame, rgb: np.ndarray, chain: np.ndarray | None, before=(),
               stages=None) -> str | None:
    """Writer thread: one frame, and with ``chain`` the checkpoint after it once the writes ``before`` (futures of
    the frames before it, submitted earlier) are done; the failure reason or None. ``stages``: StageTimes
    ("write" time per frame)."""
    try:
        if chain is not None and any(f.result() for f in before):  # a frame below failed: no checkpoint over it
            chain = None
        t0 = time.perf_counter()
        store.save(frame.index, frame.pts, frame.duration, rgb, chain)
        if stages is not None:
            stages.add("write", time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - disk full: the video fails, finished frames stay for a rerun
        return f"cannot write frame {frame.index}: {type(exc).__name__}: {exc}"
    return None


def save_chain(store: FrameStore, index: int, chain: np.ndarray, before=()) -> str | None:
    """Writer thread: the checkpoint after a video's last frame ``index``, once the frame writes ``before`` are done."""
    try:
        if not any(f.result() for f in before):
            store.checkpoint(index, chain)
    except Exception as exc:  # noqa: BLE001 - only a shortcut for a rerun is lost; the frames are on disk
        log.warning("%s: cannot store the chain state after frame %d: %s", store.root, index, exc)
    return None
