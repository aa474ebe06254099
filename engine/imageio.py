"""Images in and out: decode anything Pillow reads into RGB (+alpha), write atomically with metadata.

Decoding applies EXIF orientation, takes a GIF's first frame, converts every mode (L, LA,
P, RGBA, CMYK, 16-bit) to RGB and keeps alpha aside so it can be re-attached where the
output format keeps it. The pixel limit is checked from the header, before decoding, so a
decompression bomb is a recorded failure rather than a crash or an OOM. Paths may be
object-store URLs: reads stream from ``Storage.open_read`` into Pillow (no temporary files),
writes encode to bytes and go through ``Storage.write_bytes`` (one PUT; local: atomic_write).

The job's loader, :func:`load_working_image`, shrinks before it converts to float: a JPEG
is decoded DCT-scaled (Pillow ``draft``: 1/2, 1/4 or 1/8, never below the working size),
8-bit images are resized in uint8 by Pillow (antialiased bilinear after an integer
``reduce``), and only the working-size image becomes float32. 16-bit and float modes keep
the full-precision float path. :func:`save_image` encodes, then writes through
``atomic.atomic_write`` (temporary + rename; ``fsync`` optional, done by the writer threads).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin

from .storage import URL, Storage, is_url, location  # noqa: F401

log = logging.getLogger(__name__)

Source = str | Path | BinaryIO  # a path or a readable binary file object
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
REDUCING_GAP = 3.0  # Pillow: integer reduce() first while the ratio is >= 3x the target, then bilinear
_EXIF_SWAPS_AXES = {5, 6, 7, 8}
_FORMAT_BY_EXT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
                  ".bmp": "BMP", ".gif": "GIF"}
IMAGE_EXTENSIONS = tuple(_FORMAT_BY_EXT)
_KEEPS_ALPHA = {"PNG", "WEBP", "TIFF"}


class ImageLoadError(Exception):
    """The file is not a usable image; ``str(err)`` is the reason recorded in the report."""


@dataclass
class LoadedImage:
    rgb: np.ndarray  # [H, W, 3] float32 in [0, 1]
    alpha: np.ndarray | None  # [H, W] float32 in [0, 1], or None
    source_mode: str
    source_format: str | None


@contextlib.contextmanager
def _source(path, storage: Storage | None, block_size: int = 4 << 20):
    """A local Path as is, or an open stream of an object (closed afterwards); read errors -> ImageLoadError."""
    if not isinstance(path, (str, Path, URL)):  # already a readable file object
        yield path
        return
    path = location(path)
    if isinstance(path, Path):
        yield path
        return
    try:
        fh = (storage or Storage()).open_read(path, block_size)
    except OSError as exc:
        raise ImageLoadError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    with fh:
        yield fh


def _source_size(src: Source) -> int:
    if isinstance(src, (str, Path)):
        return Path(src).stat().st_size if Path(src).exists() else 0
    try:
        src.seek(0, os.SEEK_END)
        return src.tell()
    except (OSError, AttributeError):
        return 1


def _guard_open(path: Source, max_pixels: int) -> Image.Image:
    Image.MAX_IMAGE_PIXELS = max(int(max_pixels), 1)  # Pillow's own bomb check at 2x our limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageLoadError(f"image exceeds the pixel limit of {max_pixels} (--max-pixels)") from None
    except Image.UnidentifiedImageError:
        size = _source_size(path)
        raise ImageLoadError("empty file" if size == 0 else "not an image Pillow can identify") from None
    except OSError as exc:
        raise ImageLoadError(f"cannot open: {exc}") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageLoadError(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} (--max-pixels)")
    return im


def probe_size(path: Path | URL, max_pixels: int, storage: Storage | None = None) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header only."""
    with _source(path, storage, 256 << 10) as src, _guard_open(src, max_pixels) as im:  # headers: a small block
        w, h = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block is not fatal
            orientation = 1
    return (h, w) if orientation in _EXIF_SWAPS_AXES else (w, h)


def _to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.int32, np.int64) or arr.dtype.kind in "iu":
        peak = 65535.0 if arr.max(initial=0) > 255 or arr.dtype == np.uint16 else 255.0
        return np.clip(arr.astype(np.float32) / peak, 0.0, 1.0)
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _has_alpha(im: Image.Image, mode: str) -> bool:
    """P, and L / RGB with a PNG tRNS colour key, carry their transparency in ``im.info``."""
    return mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in im.info)


def _float_rgb(im: Image.Image, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A loaded image -> (rgb [H,W,3], alpha [H,W] or None), float32 in [0, 1] at full size."""
    if mode in _HIGH_DEPTH:
        gray = _to_float(np.asarray(im))  # [H, W]
        return np.repeat(gray[..., None], 3, axis=2), None
    if _has_alpha(im, mode):
        arr = np.asarray(im.convert("RGBA"))
        return _to_float(arr[..., :3]), _to_float(arr[..., 3])
    return _to_float(np.asarray(im.convert("RGB"))), None


def load_image(path: Source | URL, max_pixels: int, storage: Storage | None = None) -> LoadedImage:
    """Decode ``path`` to float RGB (+alpha) at full size. Raises ImageLoadError with a clear reason."""
    try:
        with _source(path, storage) as src, _guard_open(src, max_pixels) as im:
            fmt = im.format
            im.seek(0)  # first frame of animations
            mode = im.mode
            im = ImageOps.exif_transpose(im)
            im.load()
            rgb, alpha = _float_rgb(im, mode)
    except ImageLoadError:
        raise
    except Exception as exc:  # truncated data, broken codecs, ...
        raise ImageLoadError(f"cannot decode: {type(exc).__name__}: {exc}") from None
    return LoadedImage(np.ascontiguousarray(rgb), alpha, mode, fmt)


@dataclass
class WorkingImage:
    data: torch.Tensor  # [3, H, W] at the working size: uint8 (8-bit sources) or float32 in [0, 1]
    alpha: np.ndarray | None  # [H, W] float32 in [0, 1] at the working size, or None
    source_mode: str
    source_format: str | None
    seconds: dict = field(default_factory=dict)  # decode, resize

    @property
    def pixels(self) -> torch.Tensor:
        """[3, H, W] float32 in [0, 1] (uint8 data divided by 255, as the device does after upload)."""
        return self.data.float().div_(255.0) if self.data.dtype == torch.uint8 else self.data


def _draft(im: Image.Image, hw: tuple[int, int]) -> None:
    """Ask the JPEG decoder for a DCT-scaled image no smaller than ``hw`` (as stored, before EXIF)."""
    h, w = hw
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is not fatal
        orientation = 1
    size = (h, w) if orientation in _EXIF_SWAPS_AXES else (w, h)
    im.draft(None, size)


def load_working_image(src: Source | URL, hw: tuple[int, int], max_pixels: int,
                       storage: Storage | None = None) -> WorkingImage:
    """Decode ``src`` (path or binary file object) straight to the working size ``hw`` = (H, W).

    Same modes, EXIF, alpha and pixel-limit handling as :func:`load_image`; raises
    ImageLoadError with the same reasons. Alpha is resized as ``save_image`` would (Lanczos, 8-bit).
    """
    from .sizing import to_tensor

    h, w = hw
    t0 = time.perf_counter()
    try:
        with _source(src, storage) as stream, _guard_open(stream, max_pixels) as im:
            fmt = im.format
            im.seek(0)  # first frame of animations
            mode = im.mode
            if fmt in ("JPEG", "MPO") and mode not in _HIGH_DEPTH:  # MPO: cameras' multi-picture JPEG
                _draft(im, hw)
            im = ImageOps.exif_transpose(im)
            im.load()
            if mode in _HIGH_DEPTH:  # full precision: float at full size, torch resize (as before)
                rgb, alpha = _float_rgb(im, mode)
                t1 = time.perf_counter()
                return WorkingImage(to_tensor(rgb, hw), alpha, mode, fmt,
                                    {"decode": t1 - t0, "resize": time.perf_counter() - t1})
            a_im = None
            if _has_alpha(im, mode):
                rgba = im.convert("RGBA")
                rgb_im, a_im = rgba.convert("RGB"), rgba.getchannel("A")  # straight (not premultiplied) colour
            else:
                rgb_im = im.convert("RGB")
            t1 = time.perf_counter()
            if rgb_im.size != (w, h):
                rgb_im = rgb_im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)
            pixels = torch.from_numpy(np.asarray(rgb_im).copy()).permute(2, 0, 1)  # [3,H,W] uint8: 1/4 the bytes
            alpha = None
            if a_im is not None:
                if a_im.size != (w, h):
                    a_im = a_im.resize((w, h), Image.Resampling.LANCZOS)
                alpha = np.asarray(a_im).astype(np.float32) / 255.0  # [H, W]
    except ImageLoadError:
        raise
    except Exception as exc:  # truncated data, broken codecs, ...
        raise ImageLoadError(f"cannot decode: {type(exc).__name__}: {exc}") from None
    return WorkingImage(pixels.contiguous(), alpha, mode, fmt, {"decode": t1 - t0, "resize": time.perf_counter() - t1})


def format_for(path: Path | URL) -> str:
    try:
        return _FORMAT_BY_EXT[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"cannot write {path.name!r}; valid output suffixes: {', '.join(_FORMAT_BY_EXT)}") from None


def _encode(img: Image.Image, fmt: str, meta: str) -> dict:
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("dreamfleet", meta)
        return {"pnginfo": info}
    if fmt == "JPEG":
        return {"quality": 95, "comment": meta.encode()}
    if fmt in ("WEBP", "TIFF"):
        exif = Image.Exif()
        exif[0x010E] = meta  # ImageDescription
        return {"exif": exif.tobytes(), "quality": 95} if fmt == "WEBP" else {"tiffinfo": {270: meta}}
    if fmt == "GIF":
        return {"comment": meta.encode()}
    return {}


def encode_image(path: Path | URL, rgb: np.ndarray, alpha: np.ndarray | None, metadata: dict) -> bytes:
    """rgb [H,W,3] uint8, or float in [0,1] (+alpha [h,w], resized to fit) -> the file's bytes, format from ``path``."""
    path = location(path)
    fmt = format_for(path)
    arr = rgb if rgb.dtype == np.uint8 else (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if alpha is not None and fmt in _KEEPS_ALPHA:
        a = Image.fromarray((np.clip(alpha, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "L")
        if a.size != img.size:
            a = a.resize(img.size, Image.Resampling.LANCZOS)
        img.putalpha(a)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **_encode(img, fmt, json.dumps(metadata, sort_keys=True)))
    return buf.getvalue()


def save_image(path: Path | URL | str, rgb: np.ndarray, alpha: np.ndarray | None, metadata: dict,
               fsync: bool = True, storage: Storage | None = None) -> None:
    """Write rgb [H,W,3] in [0,1] (+alpha [h,w], resized to fit) to ``path`` atomically (objects: one PUT)."""
    (storage or Storage()).write_bytes(path, encode_image(path, rgb, alpha, metadata), fsync=fsync)


def read_metadata(path: Path | URL | str, storage: Storage | None = None) -> dict | None:
    """The dream parameters embedded in an output, or None."""
    with _source(path, storage) as src, Image.open(src) as im:
        raw = im.info.get("dreamfleet") or im.info.get("comment")
        if raw is None:
            raw = im.getexif().get(0x010E)
    if raw is None:
        return None
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError):
        return None
