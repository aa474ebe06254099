"""The dreamfleet version, from one place: ``pyproject.toml``, read back from the installed package's metadata.

Every writer of a version (``dreamfleet --version``, the metadata embedded in each output, the report's
environment, benchmark rows) calls ``dreamfleet_version()``; nothing else spells a version number.
"""
from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

UNKNOWN = "0+unknown"  # a source tree used without installing it (no package metadata to read)


@lru_cache(maxsize=1)
def dreamfleet_version() -> str:
    """The installed distribution's version, e.g. ``"0.3.0"`` (``pip install -e .`` refreshes it after a bump)."""
    try:
        return version("dreamfleet")
    except PackageNotFoundError:
        return UNKNOWN


__all__ = ["UNKNOWN", "dreamfleet_version"]
