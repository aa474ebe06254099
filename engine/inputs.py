"""Which files a job reads and where each result goes.

Inputs are files, folders (recursive) and globs. Each input gets a relative path that its
output mirrors under the output folder; with several roots, each root's name prefixes its
files. Output paths are checked never to leave the output folder. Files inside the output
folder are never taken as inputs.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .imageio import IMAGE_EXTENSIONS, TMP_SUFFIX

_FORMAT_EXT = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tif"}


@dataclass(frozen=True)
class InputItem:
    path: Path  # the file to read
    rel: str  # posix relative path; the image's identity (seeds its jitter stream)


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _inside(p: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def discover(inputs: list[str], out_dir: Path | None = None) -> tuple[list[InputItem], list[tuple[str, str]]]:
    """(items sorted by rel, [(input, reason)] for inputs that name nothing)."""
    roots: list[tuple[Path, list[Path], bool]] = []  # (base folder, files, from a folder or glob)
    problems: list[tuple[str, str]] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and _is_image_name(f) and not _inside(f, out_dir))
            roots.append((p, files, True))
        elif p.is_file():
            roots.append((p.parent, [p], False))
        elif glob.has_magic(raw):
            matches = sorted(Path(m) for m in glob.glob(raw, recursive=True) if Path(m).is_file())
            matches = [m for m in matches if not _inside(m, out_dir)]
            if not matches:
                problems.append((raw, "glob matches no file"))
                continue
            base = Path(os.path.commonpath([str(m.parent) for m in matches]))
            roots.append((base, matches, True))
        else:
            problems.append((raw, "no such file or folder"))
    several = sum(1 for _, _, tree in roots if tree) > 1
    items: dict[str, InputItem] = {}
    for base, files, tree in roots:
        for f in files:
            rel = PurePosixPath(f.relative_to(base).as_posix())
            if several and tree and base.name:
                rel = PurePosixPath(base.name) / rel
            key = str(rel)
            if key in items and items[key].path.resolve() != f.resolve():
                problems.append((str(f), f"another input already maps to {key!r}"))
                continue
            items[key] = InputItem(f, key)
    return sorted(items.values(), key=lambda i: i.rel), problems


def output_path(out_dir: Path, rel: str, output_format: str = "same") -> Path:
    """Where ``rel``'s result goes; raises ValueError if that would leave ``out_dir``."""
    rel_p = PurePosixPath(rel)
    if rel_p.is_absolute() or ".." in rel_p.parts:
        raise ValueError(f"output path for {rel!r} would leave the output folder")
    if output_format != "same":
        rel_p = rel_p.with_name(rel_p.name + _FORMAT_EXT[output_format])
    elif rel_p.suffix.lower() not in IMAGE_EXTENSIONS:  # explicitly named non-image file
        rel_p = rel_p.with_name(rel_p.name + ".png")
    target = (out_dir / Path(*rel_p.parts)).resolve()
    root = out_dir.resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"output path for {rel!r} would leave the output folder")
    return target


def clean_stale_temporaries(out_dir: Path) -> int:
    """Remove temporary files a killed run left behind; returns how many."""
    n = 0
    if out_dir.is_dir():
        for tmp in out_dir.rglob(f"*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            n += 1
    return n
