"""Facts about the machine a benchmark runs on: device, peak FLOP/s, memory, versions, threads, load.

Owns the table of device peaks (dense, no sparsity) and the CPU peak *estimate*
(cores x GHz x FLOPs per cycle per core from the ISA the CPU reports), the peak-memory
probe (process RSS sampled in a thread; CUDA max allocated) and the environment block
that every benchmark row carries.
"""
from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Dense peak TFLOP/s by (GPU name substring, precision); fp32 means TF32 tensor cores
# (PyTorch's default for convolutions: torch.backends.cudnn.allow_tf32 is True).
GPU_PEAKS_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0}),  # SXM / HBM3
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 183.0}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 62.5}),
)
# the planning point of the issue: a job is "bounded" at this fraction of the bf16 peak
PLANNING_FRACTION = 0.40


def cpu_flags() -> tuple[dict[str, str], set[str]]:
    """(first /proc/cpuinfo block as a dict, its flag set); empty off Linux."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info, set()
    for line in text.split("\n\n")[0].splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    return info, set(info.get("flags", "").split())


def cpu_peak(precision: str) -> tuple[float, str]:
    """Estimated dense peak TFLOP/s of this CPU for ``precision`` and how it was estimated."""
    info, flags = cpu_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ghz = float(info.get("cpu MHz", 0) or 0) / 1000.0 or float(info.get("bogomips", 4000)) / 2000.0
    amd_zen4 = info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "25"
    if "avx512f" in flags and not amd_zen4:
        fp32, isa = 64, "AVX-512, 2 FMA units x 16 fp32 x 2"
    elif "avx512f" in flags:  # Zen 4 runs 512-bit ops on two 256-bit FMA pipes
        fp32, isa = 32, "AVX-512 on Zen 4 (2 x 256-bit FMA pipes: 2 x 8 fp32 x 2)"
    elif "avx2" in flags and "fma" in flags:
        fp32, isa = 32, "AVX2, 2 FMA units x 8 fp32 x 2"
    else:
        fp32, isa = 8, "SSE (no FMA)"
    per_cycle = fp32
    if precision in ("bf16", "fp16"):
        if "amx_bf16" in flags:
            per_cycle, isa = 1024, "AMX-BF16 tile unit"
        elif "avx512_bf16" in flags:
            per_cycle, isa = 2 * fp32, isa + "; bf16 dot products (VDPBF16PS) double it"
    tflops = cores * ghz * per_cycle / 1000.0
    how = f"estimate: {cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({isa}); no turbo, no measurement"
    return tflops, how


def device_peak(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, source) for the device and precision."""
    if device.type == "cpu":
        return cpu_peak(precision)
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_PEAKS_TFLOPS:
        if key in name:
            return peaks.get(precision, peaks["fp32"]), f"table: {key} dense {precision} (datasheet)"
    return None, f"no peak listed for {name!r}; add it to GPU_PEAKS_TFLOPS"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info, _ = cpu_flags()
    return f"{info.get('model name', platform.processor() or 'cpu')} ({os.cpu_count()} logical CPUs)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryProbe:
    """Peak process RSS (sampled every ``interval`` s) and CUDA max allocated inside a ``with`` block."""

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device, self.interval = device, interval
        self.start_rss = self.peak_rss = 0
        self.cuda_peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, _rss_bytes())

    @staticmethod
    def _trim() -> None:
        """Hand freed heap pages back to the OS (glibc) so the RSS rise measures this run's working set."""
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

    def __enter__(self) -> "MemoryProbe":
        if self.device.type == "cpu":
            self._trim()
        self.start_rss = self.peak_rss = _rss_bytes()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_rss = max(self.peak_rss, _rss_bytes())
        if self.device.type == "cuda":
            self.cuda_peak = torch.cuda.max_memory_allocated(self.device)

    def as_row(self) -> dict:
        mib = 1024.0 * 1024.0
        row = {"peak_rss_mib": round(self.peak_rss / mib, 1), "rss_growth_mib": round((self.peak_rss - self.start_rss) / mib, 1)}
        row["cuda_max_allocated_mib"] = round(self.cuda_peak / mib, 1) if self.cuda_peak is not None else None
        return row


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed or broken
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: torch.device) -> dict:
    """Versions, threads, device and load: the block every row carries."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    env = {
        "device": str(device), "device_name": device_name(device), "python": sys.version.split()[0],
        "torch": torch.__version__, "torchvision": _version("torchvision"), "onnxruntime": _version("onnxruntime"),
        "dreamfleet": _version("dreamfleet"), "git_commit": git_commit(), "host_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_avg_1_5_15": [round(v, 2) for v in load],
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["tf32_conv"] = torch.backends.cudnn.allow_tf32
    return env


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
