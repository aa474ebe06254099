"""A video's resumable state under ``OUT/.dreamfleet/video/<param hash>/<rel>/``: dreamed frames and the chain.

Each dreamed frame is written atomically (``engine.atomic``) as it finishes, a lossless PNG
named by its frame index, presentation timestamp and duration (``000042.42042.1001.png``; ``x``:
no duration), so the final encode needs no second decode and keeps the source timing exactly. The chain's state after
frame t, the previous dream as float32 ``[3,H,W]`` pixels (``chain.000042.npy``), is written
after the frame; its source frame is decoded again on resume. A killed job resumes at
``resume_point``: the frame after the newest chain state whose frames are all on disk, so the
resumed video equals an uninterrupted one (same initial images, same jitter keys).
"""
from __future__ import annotations

import io
import logging
import re
import shutil
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..vocabulary import VIDEO_STATE_DIR

log = logging.getLogger(__name__)

_FRAME = re.compile(r"^(\d+)\.(-?\d+)\.(\d+|x)\.png$")
_CHAIN = re.compile(r"^chain\.(\d+)\.npy$")


class FrameStore:
    """The frames and chain state of one video being dreamed."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

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

        Only a chain state whose frames ``start..t`` are all on disk counts (a frame written after its
        chain state, or missing, is redone)."""
        have = {f[0] for f in self.frames()}
        for t, path in reversed(self._chains()):
            if t >= start and all(i in have for i in range(start, t + 1)):
                try:
                    return t + 1, np.load(path)
                except (OSError, ValueError) as exc:  # a damaged state file: try an older one
                    log.warning("chain state %s unreadable (%s); trying an older one", path, exc)
        return start, None

    def save(self, index: int, pts: int, duration: int | None, rgb: np.ndarray, chain: np.ndarray | None) -> None:
        """Writer thread: frame ``index`` (uint8 [H,W,3]) then the chain state after it (float32 [3,H,W])."""
        import cv2

        ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise OSError(f"cannot encode frame {index} as PNG")
        dur = "x" if duration is None else int(duration)
        atomic_write(self.root / f"{index:06d}.{int(pts)}.{dur}.png", png.tobytes(), fsync=True)
        if chain is None:
            return
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(chain, dtype=np.float32))
        atomic_write(self.root / f"chain.{index:06d}.npy", buf.getvalue(), fsync=True)
        for t, path in self._chains():  # older states are never needed again
            if t < index:
                path.unlink(missing_ok=True)

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
