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



FAULTS = ("import resource, sys, torch; from dreamfleet.engine import hostmem; {setup}\n"
          "torch.manual_seed(0)\n"
          "net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),\n"
          "                          torch.nn.Conv2d(64, 64, 3, padding=1)).requires_grad_(False)\n"
          "x0 = torch.rand(1, 3, 384, 384)  # activations of 36 MiB: above glibc's largest mmap threshold\n"
          "def step():\n"
          "    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
          "    x = x0.clone().requires_grad_(True)\n"
          "    net(x).square().mean().backward()\n"
          "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0\n"
          "print(min([step() for _ in range(12)][2:]))")  # the fewest: a stray fault (khugepaged, load) is not the allocator


def _refaults(setup: str, thp: str) -> int:
    """Fewest page faults of a steady ascent-like step (forward + input gradient), in a fresh process."""
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE=thp)
    return int(subprocess.run([sys.executable, "-c", FAULTS.format(setup=setup)], env=env, capture_output=True,
                              text=True, check=True).stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize("thp", ["1"])  # the CLI's default (huge pages); "0" behaves the same
def test_cached_host_allocations_are_reused_without_page_faults(thp):
    """A step's freed activations come back to the next step without faulting (issue 17); bounding undoes it."""
    default = _refaults("", thp)
    assert default > 2000  # glibc's default: each large block mmapped, faulted in, unmapped, every step
    assert _refaults("assert hostmem.cache_host_allocations()", thp) < default // 4  # 0 on a quiet machine
    assert _refaults("hostmem.cache_host_allocations(); assert hostmem.bound_host_allocator()", thp) > 2000
