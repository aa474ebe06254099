"""Images in and out: decode anything Pillow reads into RGB (+alpha), write atomically with metadata.

Decoding applies EXIF orientation, takes a GIF's first frame, converts every mode (L, LA,
P, RGBA, CMYK, 16-bit) to RGB and keeps alpha aside so it can be re-attached where the
output format keeps it. The pixel limit is checked from the header, before decoding, so a
decompression bomb is a recorded failure rather than a crash or an OOM.
"""
from __future__ import annotations

import io
import json
import logging
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

log = logging.getLogger(__name__)

TMP_SUFFIX = ".dreamfleet-tmp"
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


def _guard_open(path: Path, max_pixels: int) -> Image.Image:
    Image.MAX_IMAGE_PIXELS = max(int(max_pixels), 1)  # Pillow's own bomb check at 2x our limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageLoadError(f"image exceeds the pixel limit of {max_pixels} (--max-pixels)") from None
    except Image.UnidentifiedImageError:
        size = path.stat().st_size if path.exists() else 0
        raise ImageLoadError("empty file" if size == 0 else "not an image Pillow can identify") from None
    except OSError as exc:
        raise ImageLoadError(f"cannot open: {exc}") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageLoadError(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} (--max-pixels)")
    return im


def probe_size(path: Path, max_pixels: int) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header only."""
    with _guard_open(path, max_pixels) as im:
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


def load_image(path: Path, max_pixels: int) -> LoadedImage:
    """Decode ``path`` to float RGB (+alpha). Raises ImageLoadError with a clear reason."""
    path = Path(path)
    try:
        with _guard_open(path, max_pixels) as im:
            fmt = im.format
            im.seek(0)  # first frame of animations
            mode = im.mode
            im = ImageOps.exif_transpose(im)
            im.load()
            alpha = None
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                gray = _to_float(np.asarray(im))  # [H, W]
                rgb = np.repeat(gray[..., None], 3, axis=2)
            else:
                has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
                if has_alpha:
                    rgba = im.convert("RGBA")
                    arr = np.asarray(rgba)
                    rgb, alpha = _to_float(arr[..., :3]), _to_float(arr[..., 3])
                else:
                    rgb = _to_float(np.asarray(im.convert("RGB")))
    except ImageLoadError:
        raise
    except Exception as exc:  # truncated data, broken codecs, ...
        raise ImageLoadError(f"cannot decode: {type(exc).__name__}: {exc}") from None
    return LoadedImage(np.ascontiguousarray(rgb), alpha, mode, fmt)


def format_for(path: Path) -> str:
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


def save_image(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, metadata: dict) -> None:
    """Write rgb [H,W,3] uint8, or float in [0,1] (+alpha [h,w], resized to fit) to ``path`` atomically."""
    path = Path(path)
    fmt = format_for(path)
    arr = rgb if rgb.dtype == np.uint8 else (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if alpha is not None and fmt in _KEEPS_ALPHA:
        a = Image.fromarray((np.clip(alpha, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "L")
        if a.size != img.size:
            a = a.resize(img.size, Image.Resampling.LANCZOS)
        img.putalpha(a)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **_encode(img, fmt, json.dumps(metadata, sort_keys=True)))
    try:
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_metadata(path: Path) -> dict | None:
    """The dream parameters embedded in an output, or None."""
    with Image.open(path) as im:
        raw = im.info.get("dreamfleet") or im.info.get("comment")
        if raw is None:
            raw = im.getexif().get(0x010E)
    if raw is None:
        return None
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError):
        return None
