"""Which files a job reads and where each result goes.

Inputs are files, folders (recursive) and globs. Each input gets a relative path that its
output mirrors under the output folder; with several roots, each root's name (made unique)
prefixes its files; a glob's files are relative to the folder before its first wildcard.
Output paths are checked never to leave the output folder. Files inside the output folder
are never taken as inputs, and an input folder inside the output folder is refused.
Inputs and the output may also be fsspec URLs (``s3://bucket/prefix``, globs too): keys
below a prefix mirror under the output exactly as files below a folder do.

Videos (mp4, mov, mkv, webm, avi, ts, flv, ...) are inputs wherever images are. Listing takes a
file's extension as a first guess of its kind; a file whose extension is neither an image's nor a
video's (``clip.bin``, no extension) is read for its first few KB and taken as what they say
(``video.sniff.content_kind``); in a folder or glob anything else is not an input. The guess is
settled by the bytes at planning (``engine.job``): a clip named ``.jpg`` is planned as a video, a
photo named ``.mp4`` as an image, a named file that is neither is a failure record. A video's output
is MP4: its relative path with ``.mp4`` kept or appended (``a/clip.mov`` -> ``a/clip.mov.mp4``).
"""
from __future__ import annotations

import functools
import glob
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .imageio import IMAGE_EXTENSIONS
from .storage import URL, Storage, is_url, location
from .video.probe import VIDEO_EXTENSIONS
from .video.sniff import content_kind, read_head

_FORMAT_EXT = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tif"}
VIDEO_OUTPUT_EXT = ".mp4"
# never sniffed for video content: text and metadata that sit beside media in folders and buckets
_NOT_MEDIA = {".json", ".jsonl", ".txt", ".csv", ".md", ".yaml", ".yml", ".xml", ".html", ".py", ".log", ".toml",
              ".srt", ".vtt", ".parquet", ".safetensors", ".onnx", ".pt"}
_NEVER_SNIFF_DIRS = {".git", ".hg", ".svn", ".dreamfleet", "__pycache__"}  # tool state, never media


@dataclass(frozen=True)
class InputItem:
    path: Path | URL  # the file (or object) to read
    rel: str  # posix relative path; the image's identity (seeds its jitter stream)
    kind: str = "image"  # "image" | "video"


def _kind_by_name(p: Path | URL) -> str | None:
    """"image" or "video" by extension; "?" when only the content can tell; None: not an input."""
    suffix = p.suffix.lower()
    if p.name.startswith("."):
        return None
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in _NOT_MEDIA or any(part in _NEVER_SNIFF_DIRS for part in p.parts):
        return None
    return "?"


def media_kind(p: Path | URL, storage: Storage | None = None, named: bool = False) -> str | None:
    """"image", "video" or None (not an input): by extension, else by content (see the module doc).

    ``named``: the user named this file, so it is an input whatever it holds (an image by default).
    """
    kind = _kind_by_name(p)
    if kind == "?" or (kind is None and named):
        kind = content_kind(read_head(p, storage))
    return kind or ("image" if named else None)  # a named file that is neither fails at planning, saying so


@functools.lru_cache(maxsize=1024)
def _resolved_dir(folder: str) -> Path:
    return Path(folder).resolve()


def resolve_file(p: Path | URL) -> Path | URL:
    """``p.resolve()`` with its folder's resolution cached: one lstat per file instead of one per path part
    (planning a million-file job calls this for every input and every output)."""
    if isinstance(p, URL):
        return p.resolve()
    q = _resolved_dir(str(Path(p).parent)) / p.name
    return q.resolve() if q.is_symlink() else q


def _inside(p: Path | URL, folder: Path | URL | None) -> bool:
    if folder is None or isinstance(p, URL) != isinstance(folder, URL):
        return False
    try:
        resolve_file(p).relative_to(folder.resolve() if isinstance(folder, URL) else _resolved_dir(str(folder)))
        return True
    except ValueError:
        return False


def discover(inputs: list[str], out_dir: Path | URL | None = None,
             storage: Storage | None = None) -> tuple[list[InputItem], list[tuple[str, str]]]:
    """(items sorted by rel, [(input, reason)] for inputs that name nothing)."""
    roots: list[tuple[Path, list[Path], bool]] = []  # (base folder, files, from a folder or glob)
    problems: list[tuple[str, str]] = []
    for raw in inputs:
        if is_url(raw):
            _discover_url(URL(raw), out_dir, storage or Storage(), roots, problems)
            continue
        if raw.lower().startswith("file://"):
            raw = raw[len("file://"):]
        p = Path(raw)
        if p.is_dir() and out_dir is not None and _inside(p, out_dir):
            # the output folder is the input folder, or holds it: its dreams would be skipped as inputs
            raise ValueError(f"input folder {raw} is inside the output folder {out_dir}; choose another -o")
        if p.is_dir():
            files = _media(sorted(f for f in p.rglob("*") if f.is_file() and not _inside(f, out_dir)), storage)
            roots.append((p, files, True))
        elif p.is_file():
            roots.append((p.parent, [(p, media_kind(p, storage, named=True))], False))
        elif glob.has_magic(raw):
            matches = sorted(Path(m) for m in glob.glob(raw, recursive=True) if Path(m).is_file())
            matches = _media([m for m in matches if not _inside(m, out_dir)], storage)
            if not matches:
                problems.append((raw, "glob matches no image or video file"))
                continue
            roots.append((_glob_base(raw), matches, True))
        else:
            problems.append((raw, "no such file or folder"))
    prefixes = _root_prefixes([base for base, _, tree in roots if tree])
    items: dict[str, InputItem] = {}
    for base, files, tree in roots:
        for f, kind in files:
            rel = PurePosixPath(f.relative_to(base).as_posix())
            if tree and prefixes.get(base):
                rel = PurePosixPath(prefixes[base]) / rel
            key = str(rel)
            if key in items and items[key].path.resolve() != f.resolve():
                problems.append((str(f), f"another input already maps to {key!r}"))
                continue
            items[key] = InputItem(f, key, kind)
    return sorted(items.values(), key=lambda i: i.rel), problems


def _discover_url(u: URL, out_dir, storage: Storage, roots: list, problems: list) -> None:
    """The object-store branch of ``discover``: a key, a prefix (recursive) or a glob."""
    storage.check_access(u, "input")
    if glob.has_magic(u.path):
        matches = _media([m for m in storage.glob(str(u)) if not _inside(m, out_dir)], storage)
        if not matches:
            problems.append((str(u), "glob matches no image or video object"))
            return
        fixed = []
        for part in u.path.split("/")[:-1]:
            if glob.has_magic(part):
                break
            fixed.append(part)
        roots.append((URL(f"{u.protocol}://{'/'.join(fixed)}"), matches, True))
    elif u.key and storage.isfile(u):
        roots.append((u.parent, [(u, media_kind(u, storage, named=True))], False))
    else:
        if out_dir is not None and _inside(u, out_dir):
            raise ValueError(f"input prefix {u} is inside the output location {out_dir}; choose another -o")
        files = _media([f for f in storage.find(u) if not _inside(f, out_dir)], storage)
        if files:
            roots.append((u, files, True))
        else:
            problems.append((str(u), "no such object, or no image or video object below this prefix"))


def _media(paths: list, storage: Storage | None) -> list[tuple]:
    """[(path, kind)] for the paths that are images or videos (a folder's or glob's files). The files only
    their content can tell about (no or an unknown extension) are read in parallel (one small ranged GET each on an object store)."""
    kinds = [_kind_by_name(p) for p in paths]
    unknown = [p for p, k in zip(paths, kinds) if k == "?"]
    if unknown:
        with ThreadPoolExecutor(max_workers=min(16, len(unknown))) as pool:
            sniffed = dict(zip(unknown, pool.map(lambda p: content_kind(read_head(p, storage)), unknown)))
        kinds = [sniffed[p] if k == "?" else k for p, k in zip(paths, kinds)]
    return [(p, k) for p, k in zip(paths, kinds) if k is not None]


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: stable however many files match."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _root_prefixes(bases: list[Path]) -> dict[Path, str]:
    """With several folder/glob roots, each gets a unique prefix (its name; name-2, name-3 on clashes)."""
    unique = list(dict.fromkeys(bases))
    if len(unique) < 2:
        return {}
    out: dict[Path, str] = {}
    used: set[str] = set()
    for base in unique:
        name = base.resolve().name or "root"
        candidate, k = name, 1
        while candidate in used:
            k += 1
            candidate = f"{name}-{k}"
        used.add(candidate)
        out[base] = candidate
    return out


def output_path(out_dir: Path | URL, rel: str, output_format: str = "same", kind: str = "image") -> Path | URL:
    """Where ``rel``'s result goes (``kind`` "video": MP4); raises ValueError if that would leave ``out_dir``."""
    out_dir = location(out_dir)
    rel_p = PurePosixPath(rel)
    if rel_p.is_absolute() or ".." in rel_p.parts:
        raise ValueError(f"output path for {rel!r} would leave the output folder")
    if kind == "video":
        if rel_p.suffix.lower() != VIDEO_OUTPUT_EXT:
            rel_p = rel_p.with_name(rel_p.name + VIDEO_OUTPUT_EXT)
    elif output_format != "same":
        rel_p = rel_p.with_name(rel_p.name + _FORMAT_EXT[output_format])
    elif rel_p.suffix.lower() not in IMAGE_EXTENSIONS:  # explicitly named non-image file
        rel_p = rel_p.with_name(rel_p.name + ".png")
    target = resolve_file(out_dir / Path(*rel_p.parts))
    root = out_dir.resolve() if isinstance(out_dir, URL) else _resolved_dir(str(out_dir))
    if target != root and root not in target.parents:
        raise ValueError(f"output path for {rel!r} would leave the output folder")
    return target

