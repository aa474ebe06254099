"""Location names: a plain path, a ``file://`` URL, or an object-store URL (``s3://bucket/key``).

``location(x)`` turns an input/output string into a ``Path`` or a ``URL``; ``URL`` is a
pure path (joins, names, parents, ``relative_to`` like ``PurePosixPath``) and does no I/O,
so the code that mirrors relative paths under an output folder works on keys unchanged.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath


def is_url(x) -> bool:
    """True for object-store URLs (``proto://...`` other than ``file://``)."""
    if isinstance(x, URL):
        return True
    if isinstance(x, Path):
        return False
    proto, sep, _ = str(x).partition("://")
    return bool(sep) and proto.isidentifier() and proto.lower() not in ("file", "local")


class URL:
    """An object-store path ``proto://bucket/key``: joins, names and parents like PurePosixPath, no I/O."""

    __slots__ = ("protocol", "path")

    def __init__(self, url: str | URL) -> None:
        proto, _, rest = str(url).partition("://")
        self.protocol = proto.lower()
        self.path = "/".join(p for p in rest.split("/") if p not in ("", "."))  # "bucket/key/..."

    def __str__(self) -> str:
        return f"{self.protocol}://{self.path}"

    def __repr__(self) -> str:
        return f"URL({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, URL) and str(self) == str(other)

    def __lt__(self, other) -> bool:
        return str(self) < str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, other) -> URL:
        return URL(f"{self}/{other}")

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def key(self) -> str:
        return self.path.split("/", 1)[1] if "/" in self.path else ""

    @property
    def parts(self) -> tuple[str, ...]:
        return (f"{self.protocol}://{self.bucket}", *[p for p in self.key.split("/") if p])

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> URL:
        return URL(f"{self.protocol}://{self.path.rsplit('/', 1)[0]}") if "/" in self.path else self

    @property
    def parents(self) -> list[URL]:
        out, p = [], self
        while p.parent != p:
            p = p.parent
            out.append(p)
        return out

    def with_name(self, name: str) -> URL:
        return self.parent / name

    def relative_to(self, other) -> PurePosixPath:
        if not isinstance(other, URL) or other.protocol != self.protocol:
            raise ValueError(f"{self} is not under {other}")
        if self.path == other.path:
            return PurePosixPath(".")
        if not self.path.startswith(other.path + "/"):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.path[len(other.path) + 1:])

    def as_posix(self) -> str:
        return str(self)

    def resolve(self) -> URL:
        return self


def location(x) -> Path | URL:
    """A ``Path`` for plain paths and ``file://`` URLs, a ``URL`` for object stores."""
    if isinstance(x, (Path, URL)):
        return x
    s = str(x)
    if is_url(s):
        return URL(s)
    if s.lower().startswith("file://"):
        return Path(s[len("file://"):])
    return Path(s)


__all__ = ["URL", "is_url", "location"]
