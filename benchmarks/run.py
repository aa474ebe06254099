"""One benchmark run: every case of a profile measured, rows appended to ``results/``, table and chart rewritten.

``run_benchmarks`` is what ``dreamfleet bench`` and ``python -m dreamfleet.benchmarks``
call. All cases are built first, then timed round-robin with the seed baseline among
them; every dreamfleet row on the seed's job gets ``speedup_vs_seed`` from that same run.
Cases whose backend is unavailable here become ``skipped`` rows that say why; a case that
raises becomes a ``failed`` row, and the run goes on.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import logging
import time
from pathlib import Path

import torch

from dreamfleet.engine.backends.eager import resolve_device

from . import flops, hardware, report
from .harness import Case, Job, measure, not_run_row
from .profiles import ALL_BACKENDS, get_profile
from .rows import append_rows

log = logging.getLogger(__name__)

RESULTS_DIR = Path("benchmarks") / "results"  # under the current directory (a checkout's own, run from its root)
SAMPLES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")


def sample_dirs() -> list[Path]:
    """Where the sample photos are: a checkout's data/samples, or the installed ``dreamfleet.samples`` data."""
    dirs = [Path(__file__).resolve().parent.parent / "data" / "samples"]
    try:
        spec = importlib.util.find_spec("dreamfleet.samples")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        dirs += [Path(p) for p in spec.submodule_search_locations]
    return dirs


def load_images(n: int, size: int) -> torch.Tensor:
    """[n,3,size,size] in [0,1]: the sample photos, cycled; smooth noise when none are found."""
    from dreamfleet.engine.imageio import load_image
    from dreamfleet.engine.sizing import to_tensor

    dirs = sample_dirs()
    paths = [d / s for s in SAMPLES for d in dirs if (d / s).is_file()]
    if not paths:
        log.warning("no sample photos in %s; using generated images", [str(d) for d in dirs])
        gen = torch.Generator().manual_seed(0)
        low = torch.rand(n, 3, max(2, size // 16), max(2, size // 16), generator=gen)
        return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return torch.stack([to_tensor(load_image(paths[i % len(paths)], 10**8).rgb, (size, size)) for i in range(n)])


def unavailable(backend: str, device: torch.device, selected: tuple[str, ...]) -> str | None:
    """Why ``backend`` is not measured here, or None when it can run."""
    if backend not in ALL_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(ALL_BACKENDS)}")
    if backend == "onnxruntime" and importlib.util.find_spec("dreamfleet.export.ort_backend") is None:
        return "dreamfleet.export.ort_backend is not importable in this checkout"
    if backend == "tensorrt":
        if device.type != "cuda":
            return "TensorRT needs a CUDA device"
        if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("dreamfleet.export.trt_backend") is None:
            return "tensorrt (or dreamfleet.export.trt_backend) is not installed"
    if backend not in selected:
        hint = " (torch.compile takes minutes per shape on 2 CPU cores)" if backend == "compile" else ""
        return f"not in this run's backends {list(selected)}{hint}; add it with --backends {backend}"
    return None


def _build(case: Case, device: torch.device) -> Job | dict:
    """The built job, or a ``failed`` row when building it raises (export, compile, weights...)."""
    default_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(case.threads or default_threads)
        t0 = time.perf_counter()
        job = Job(case, load_images(case.n_images, case.size), device)
        log.info("built %s in %.1fs", case.key, time.perf_counter() - t0)
        return job
    except (ValueError, RuntimeError, ImportError, OSError, NotImplementedError) as exc:
        log.warning("%s failed: %s: %s", case.key, type(exc).__name__, exc)
        return not_run_row(case, "failed", f"{type(exc).__name__}: {exc}"[:500], device)
    finally:
        torch.set_num_threads(default_threads)


def run_benchmarks(profile: str = "quick", device: str = "auto", out_dir: str | Path | None = None,
                   backends: tuple[str, ...] | None = None, only: str | None = None, repeats: int | None = None,
                   warmup: int | None = None, chart: bool = True, bounds: bool = True) -> list[dict]:
    """Measure ``profile`` on ``device``; append rows to OUT/<device>[_profile].jsonl; rewrite latest.md and chart.png."""
    dev = resolve_device(device)
    prof = get_profile(profile, dev)
    selected = tuple(backends) if backends else prof.default_backends
    for b in selected:
        unavailable(b, dev, ALL_BACKENDS)  # validates the names
    repeats = prof.repeats if repeats is None else repeats
    warmup = prof.warmup if warmup is None else warmup
    out = Path(out_dir) if out_dir else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    cases = [c for c in prof.cases if not only or only in c.key]
    if not cases:
        raise ValueError(f"--only {only!r} matches no case of profile {profile!r}; case keys look like {prof.cases[0].key}")
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    log.info("profile %s on %s: %d cases, %d repeats, %d warm-up; load %s", profile, dev, len(cases), repeats,
             warmup, hardware.environment(dev)["load_avg_1_5_15"])
    rows: list[dict] = []
    jobs: list[Job] = []
    for case in cases:
        reason = unavailable(case.backend, dev, selected) if case.impl == "dreamfleet" else None
        if reason:
            log.info("%s skipped: %s", case.key, reason)
            rows.append(not_run_row(case, "skipped", reason, dev))
            continue
        built = _build(case, dev)
        (jobs.append if isinstance(built, Job) else rows.append)(built)
    try:
        if jobs:
            log.info("timing %d jobs round-robin: %d warm-up + %d timed runs each", len(jobs), warmup, repeats)
            measured = measure(jobs, repeats, warmup)
            for r in measured:
                log.info("%s: %.3f images/s", r["case"], r["images_per_s"])
            rows = measured + rows
    finally:
        for j in jobs:
            j.close()
        gc.collect()
    seed_row = next((r for r in rows if r["impl"] == "seed" and r["status"] == "ok"), None)
    for r in rows:
        r.update(run_id=run_id, profile=profile, label=prof.label)
        if seed_row and r["status"] == "ok" and r["job"] == seed_row["job"]:
            r["speedup_vs_seed"] = round(r["images_per_s"] / seed_row["images_per_s"], 3)
            r["seed_case"] = seed_row["case"]  # timed interleaved with it, in this run
    name = f"{dev.type}.jsonl" if profile == "quick" else f"{dev.type}_{profile}.jsonl"
    append_rows(out / name, rows)
    log.info("%d rows appended to %s", len(rows), out / name)
    bounds_path = out / "bounds.json"
    if bounds and not bounds_path.exists():
        write_bounds(bounds_path)
    report.write_table(out)
    if chart:
        report.write_chart(out)
    return rows


def write_bounds(path: Path) -> list[dict]:
    """The FLOP limit of the standard job on each listed GPU at the planning fraction of its bf16 peak."""
    peaks = {gpu: p["bf16"] for gpu, p in hardware.GPU_PEAKS_TFLOPS}
    rows = flops.standard_job_bounds(peaks, hardware.PLANNING_FRACTION)
    for r in rows:
        r.update(gpu=r.pop("device"), precision="bf16")
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows
