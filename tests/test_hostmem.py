"""Host memory knobs (engine/hostmem.py): huge pages are asked for before torch is imported, a user's choice is kept."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from dreamfleet.engine.hostmem import THP_ENV, bound_host_allocator

PROBE = ("import os, sys; from dreamfleet.engine.hostmem import enable_huge_pages, THP_ENV; {before}"
         "print(enable_huge_pages(), os.environ[THP_ENV])")


def _probe(before: str = "", env_value: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != THP_ENV}
    if env_value is not None:
        env[THP_ENV] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("before,env_value,expected", [
    ("", None, "True 1"),  # the CLI's case: set before torch is imported, in effect
    ("", "0", "False 0"),  # the user turned it off: kept
    ("import torch; ", None, "False 1"),  # too late for this process (children still inherit it)
])
def test_huge_pages_are_asked_for_before_torch_reads_them(before, env_value, expected):
    assert _probe(before, env_value) == expected


def test_cli_asks_before_importing_torch():
    code = "import sys, dreamfleet.cli as c; assert 'torch' not in sys.modules; c.enable_huge_pages(); print('ok')"
    env = {k: v for k, v in os.environ.items() if k != THP_ENV}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "ok"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_bound_host_allocator_is_taken_by_glibc():
    assert bound_host_allocator() is True
