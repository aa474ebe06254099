"""The contact sheet: one PNG with the first few dozen inputs beside their dreams.

Pairs are laid out in a grid (input | dream per cell), each thumbnail fit into a square
of ``thumb`` pixels on a dark background, so the night's art can be seen at a glance. A video
shows its middle frame (the same frame of the source and of the dream).
Inputs, dreams and the sheet itself may be object-store URLs (the sheet is one PUT).
"""
from __future__ import annotations

import heapq
import io
import logging
import math
from collections.abc import Iterable

from PIL import Image, ImageOps

from dreamfleet.engine.report import ImageRecord
from dreamfleet.engine.storage import Storage, location
from dreamfleet.engine.vocabulary import CONTACT_SHEET_NAME, FINISHED

log = logging.getLogger(__name__)

SHEET_NAME = CONTACT_SHEET_NAME


def _thumb(path: str, size: int, storage: Storage | None = None, frame: int | None = None) -> Image.Image | None:
    """A thumbnail of an image, or of a video's frame ``frame``."""
    try:
        if frame is not None:
            from dreamfleet.engine.video.decode import iter_frames

            still = next(iter_frames(path, storage, start=frame, stop=frame + 1), None)
            return None if still is None else ImageOps.contain(Image.fromarray(still.rgb), (size, size),
                                                               Image.Resampling.LANCZOS)
        with (storage or Storage()).open_read(path) as fh, Image.open(fh) as im:
            im.seek(0)
            return ImageOps.contain(im.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
    except Exception as exc:  # an unreadable input is simply left out of the sheet
        log.debug("contact sheet: cannot read %s: %s", path, exc)
        return None


def make_contact_sheet(records: Iterable[ImageRecord], path, limit: int = 36, thumb: int = 128,
                       columns: int = 4, storage: Storage | None = None):
    """Write a grid of (input, dream) pairs for the first ``limit`` records (by name) with outputs; None if none.

    ``records`` may be a stream (the report's): only the ``limit`` first names are kept while it is read."""
    if limit < 1 or thumb < 8 or columns < 1:
        raise ValueError("contact sheet needs limit >= 1, thumb >= 8 and columns >= 1")
    storage = storage or Storage()
    chosen = heapq.nsmallest(limit, (r for r in records if r.status in FINISHED and r.output), key=lambda r: r.rel)
    pairs = []
    for rec in chosen:  # an output deleted since (or unreadable) leaves its pair out
        frame = (rec.video.get("frames") or 1) // 2 if rec.video else None  # a video: its middle frame
        dream = _thumb(rec.output, thumb, storage, frame)
        if dream is not None:
            pairs.append((_thumb(rec.input, thumb, storage, frame), dream))
    if not pairs:
        return None
    pad = 4
    cell_w, cell_h = 2 * thumb + 3 * pad, thumb + 2 * pad
    cols = min(columns, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (24, 24, 24))
    for n, pair in enumerate(pairs):
        x0, y0 = (n % cols) * cell_w, (n // cols) * cell_h
        for k, im in enumerate(pair):
            if im is None:
                continue
            x = x0 + pad + k * (thumb + pad) + (thumb - im.width) // 2
            y = y0 + pad + (thumb - im.height) // 2
            sheet.paste(im, (x, y))
    path = location(path)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    storage.write_bytes(path, buf.getvalue(), fsync=False)  # local: temporary + rename; objects: one PUT
    log.info("contact sheet of %d pairs -> %s", len(pairs), path)
    return path


__all__ = ["SHEET_NAME", "make_contact_sheet"]
