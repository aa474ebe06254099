"""What a file is by its leading bytes: a video container, an image, or neither.

A few KB (``SNIFF_BYTES``) are read once, from a local file or an object (one small ranged read
through ``engine.storage``), and matched against the containers FFmpeg demuxes and the image formats
Pillow reads. The name never decides: a clip named ``.jpg``, a photo named ``.mp4`` and a file with
no extension are each planned as what their bytes say (``engine.job``), and a file whose bytes are
neither is a failure record saying so (``neither_reason``).

Video containers recognized (``video_container``):

- MP4 / MOV / 3GP / 3G2: an ISO box (``ftyp``, or an old QuickTime file's ``moov``/``mdat``/``wide``/
  ``free``/``skip``/``pnot``) at offset 4; ``ftyp`` brands of stills and audio (HEIF/AVIF, M4A) are not video;
- Matroska / WebM: EBML magic ``1A 45 DF A3`` (``webm`` when its DocType says so);
- AVI (``RIFF....AVI ``) and ASF/WMV (its header GUID);
- MPEG-TS: the sync byte 0x47 every 188 bytes (3 packets); M2TS: every 192 bytes after a 4-byte timestamp;
- MPEG-PS: a pack header ``00 00 01 BA``;
- FLV (``FLV\\x01``), MXF (a partition pack key, after an optional run-in), Y4M (``YUV4MPEG2``),
  NUT (``nut/multimedia container``), Ogg with a Theora stream (``OggS`` and a ``\\x80theora`` header
  packet among its first pages; Ogg audio alone is not video).
"""
from __future__ import annotations

from pathlib import Path

from ..storage import URL, Storage

SNIFF_BYTES = 4096  # enough for 3 MPEG-TS / M2TS packets, an MP4's ftyp, an Ogg stream's first pages
_EBML = b"\x1a\x45\xdf\xa3"
_QT_BOXES = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")  # old QuickTime files start without ftyp
# ftyp major brands that are not video: HEIF/AVIF stills and sequences, audio-only MPEG-4
_NOT_VIDEO_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis",
                     b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B ")
# the FFmpeg demuxer of each container: forced when opening, so a misleading name (a .jpg) cannot steer FFmpeg's guess
DEMUXERS = {"mp4": "mov", "mov": "mov", "3gp": "mov", "matroska": "matroska", "webm": "matroska", "avi": "avi",
            "asf": "asf", "mpegts": "mpegts", "m2ts": "mpegts", "mpeg-ps": "mpeg", "flv": "flv", "mxf": "mxf",
            "y4m": "yuv4mpegpipe", "nut": "nut", "ogg-theora": "ogg"}
_ASF = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_MXF = bytes.fromhex("060e2b34020501010d01020101")  # header partition pack key (its first 13 bytes)
_IMAGES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
           (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _iso(head: bytes) -> str | None:
    box = head[4:8]
    if box == b"ftyp":
        brand = head[8:12]
        if brand in _NOT_VIDEO_BRANDS:
            return None
        if brand.startswith((b"3gp", b"3g2", b"3ge", b"3gg")):
            return "3gp"
        return "mov" if brand == b"qt  " else "mp4"
    size = int.from_bytes(head[:4], "big")  # 0: to the end of the file, 1: a 64-bit size follows
    return "mov" if box in _QT_BOXES and (size in (0, 1) or size >= 8) else None


def _every(head: bytes, first: int, stride: int, packets: int = 3) -> bool:
    """The MPEG-TS sync byte at ``first`` and every ``stride`` after it, ``packets`` times."""
    need = first + stride * (packets - 1) + 1
    return len(head) >= need and all(head[first + stride * k] == 0x47 for k in range(packets))


def video_container(head: bytes) -> str | None:
    """The video container ``head`` (a file's first bytes) starts like, or None."""
    if len(head) < 4:
        return None
    if len(head) >= 12 and (kind := _iso(head)):
        return kind
    if head.startswith(_EBML):
        return "webm" if b"webm" in head[:64] else "matroska"
    if head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"AVIX", b"AMV "):
        return "avi"
    if head.startswith(_ASF):
        return "asf"
    if _every(head, 0, 188):
        return "mpegts"
    if _every(head, 4, 192):
        return "m2ts"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg-ps"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if _MXF in head[:SNIFF_BYTES]:  # the header partition, possibly after a run-in
        return "mxf"
    if head.startswith(b"YUV4MPEG2"):
        return "y4m"
    if head.startswith(b"nut/multimedia container"):
        return "nut"
    if head.startswith(b"OggS") and b"\x80theora" in head:
        return "ogg-theora"
    return None


def image_format(head: bytes) -> str | None:
    """The image format ``head`` starts like (the ones dreamfleet reads and writes), or None."""
    for magic, name in _IMAGES:
        if head.startswith(magic):
            return name
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM") and len(head) >= 18 and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64,
                                                                                                 108, 124):
        return "BMP"
    return None


def content_kind(head: bytes) -> str | None:
    """"video", "image" or None (neither) by the leading bytes alone."""
    if video_container(head):
        return "video"
    return "image" if image_format(head) else None


def read_head(path: Path | URL | str, storage: Storage | None = None, n: int = SNIFF_BYTES) -> bytes:
    """A file's or object's first ``n`` bytes (one small read); b"" if it cannot be read (reported later)."""
    try:
        if isinstance(path, URL):
            with (storage or Storage()).open_read(path, n) as fh:
                return fh.read(n)
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def demuxer_of(path: Path | URL | str, storage: Storage | None = None) -> str | None:
    """The FFmpeg demuxer a file's bytes name (``av.open(..., format=)``), or None to let FFmpeg guess."""
    return DEMUXERS.get(video_container(read_head(path, storage)))


def describe_head(head: bytes, n: int = 8) -> str:
    """The first bytes, in hex and as text, for a failure reason: ``68 65 6c 6c ('hell')``."""
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in head[:n])
    return f"{head[:n].hex(' ')} ({text!r})"


def neither_reason(head: bytes) -> str:
    """The failure reason of a file whose bytes are neither an image nor a video container."""
    if not head:
        return "empty file"
    return ("not an image or a video: its first bytes, " + describe_head(head) +
            ", match no image format Pillow reads and no video container")


def image_failure(reason: str, head: bytes) -> str:
    """An image's failure reason, said better once its bytes are known to be no video either."""
    return neither_reason(head) if reason == "not an image Pillow can identify" else reason


__all__ = ["DEMUXERS", "SNIFF_BYTES", "content_kind", "demuxer_of", "describe_head", "image_failure", "image_format", "neither_reason", "read_head",
           "video_container"]
