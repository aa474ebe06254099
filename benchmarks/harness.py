"""Timing benchmark cases: build them, warm them up, time repeats round-robin, turn medians into JSON rows.

A ``Case`` is one configuration (implementation, model, backend, precision, batch size,
image size, octaves, iterations, threads). ``Job`` builds it; ``Job.run()`` dreams the
case's images once. ``measure`` runs each job's warm-up (not timed), then timed rounds in
which every job runs once, the device synchronized around each timer, and reports
medians: all jobs of a run see the same machine load, so their ratios hold.
Memory: ``rss_growth_mib`` is the RSS rise during a run (the allocator may reuse memory
freed by other jobs, so it is a lower bound); ``peak_rss_mib`` is the whole process with
every job of the run resident; on CUDA ``cuda_max_allocated_mib`` is exact per run.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import statistics
import time
from dataclasses import dataclass

import torch

from dreamfleet.engine.config import config_to_dict, make_config
from dreamfleet.engine.models import get_spec
from dreamfleet.engine.octaves import usable_octaves

from . import flops, hardware

log = logging.getLogger(__name__)

IMPLS = ("dreamfleet", "seed")
PRESET_BY_MODEL = {"vgg16": "seed", "bvlc_googlenet": "classic"}  # the job each model runs


@dataclass(frozen=True)
class Case:
    group: str  # what the row varies: seed, batch, size, model, backend, precision
    model: str
    impl: str = "dreamfleet"
    backend: str = "eager"
    precision: str = "fp32"
    batch_size: int = 1
    size: int = 128  # images are size x size
    octaves: int = 3
    octave_scale: float = 1.4
    iterations: int = 2
    images: int = 2  # images per timed job (rounded up to whole batches)
    layer: str | None = None  # None: the preset's layer
    threads: int = 0  # torch intra-op threads while measuring; 0: torch's default
    reproducible: bool = False  # --reproducible: batch-1 kernels per image (same pixels, other speed)

    @property
    def n_images(self) -> int:
        return self.batch_size * math.ceil(self.images / self.batch_size)

    @property
    def job_key(self) -> str:
        """Cases with the same job key dream the same pixels: their images/s compare directly."""
        return f"{self.model}:{self.layer or 'default'}/{self.size}px/{self.octaves}x{self.octave_scale}/{self.iterations}it"

    @property
    def key(self) -> str:
        threads = f"/t{self.threads}" if self.threads else ""
        repro = "/reproducible" if self.reproducible else ""
        return f"{self.job_key}/{self.impl}/{self.backend}/{self.precision}/b{self.batch_size}{threads}{repro}"

    def config(self, device: torch.device):
        if self.impl not in IMPLS:
            raise ValueError(f"unknown impl {self.impl!r}; valid: {', '.join(IMPLS)}")
        preset = PRESET_BY_MODEL.get(self.model, "classic")
        return make_config(preset, overrides=dict(
            model=self.model, layer=self.layer, backend=self.backend, precision=self.precision,
            batch_size=self.batch_size, octaves=self.octaves, octave_scale=self.octave_scale,
            iterations=self.iterations, fixed_size=self.size, random_weights=self.model != "bvlc_googlenet",
            device=str(device), reproducible=self.reproducible))


class Job:
    """A built case: ``run()`` dreams ``images`` once; ``steps`` ascent steps per run."""

    def __init__(self, case: Case, images: torch.Tensor, device: torch.device) -> None:
        from dreamfleet.backends import create_backend
        from dreamfleet.engine.build import build_dream_model_for
        from dreamfleet.engine.octaves import plan_shapes

        self.case, self.device = case, device
        self.threads = case.threads or torch.get_num_threads()
        self.cfg = case.config(device)
        self.images = images.to(device)
        if case.impl == "seed":
            self._build_seed()
            return
        self.dm = build_dream_model_for(self.cfg)
        self.n_oct = usable_octaves(case.size, case.size, case.octaves, case.octave_scale, self.dm.spec.min_size)
        self.steps = (case.n_images // case.batch_size) * self.n_oct * case.iterations
        t0 = time.perf_counter()
        self.backend = create_backend(self.dm, self.cfg, device)
        self.backend.prepare(plan_shapes([(case.size, case.size)] * case.n_images, case.batch_size, case.octaves,
                                         case.octave_scale, self.dm.spec.min_size))
        self.setup_s = round(time.perf_counter() - t0, 2)  # backend build + prepare (export, compile): untimed
        self.info = self.backend.describe()

    def _build_seed(self) -> None:
        """The article's model and loop; a truncated copy of its features (same weights) is kept for FLOP counts."""
        from dreamfleet.engine.build import DreamModel
        from dreamfleet.engine.objectives import build_objective, parse_layers
        from dreamfleet.engine.step import DreamObjective
        from dreamfleet.engine.truncate import truncate

        from .seed_baseline import SeedDream, load_vgg16

        case, cfg = self.case, self.cfg
        if case.model != "vgg16" or not (cfg.layer or "").startswith("features."):
            raise ValueError(f"the seed baseline runs vgg16 at a features.N layer; got {case.model} {cfg.layer}")
        full = load_vgg16(cfg.random_weights)
        holder = torch.nn.Module()
        holder.features = copy.deepcopy(full.features)
        spec, layers = get_spec("vgg16"), parse_layers(cfg.layer)
        module = DreamObjective(truncate(spec, holder, [cfg.layer]), build_objective(cfg.objective, layers, ()))
        self.dm = DreamModel(module, spec, {"source": "seed"}, layers, cfg.objective)
        self.seed = SeedDream(full, int(cfg.layer.split(".")[1]), case.iterations, cfg.step, case.octave_scale,
                              case.octaves, self.device)
        self.n_oct = usable_octaves(case.size, case.size, case.octaves, case.octave_scale, spec.min_size)
        self.steps = case.n_images * self.n_oct * case.iterations
        self.backend, self.setup_s = None, 0.0
        self.info = {"backend": "seed (article loop, eager autograd)", "weight_gradients": True}

    def run(self) -> torch.Tensor:
        from dreamfleet.engine.loop import dream_tensor

        if self.backend is None:
            return self.seed.dream(self.images)
        b, outs = self.case.batch_size, []
        for i in range(0, self.case.n_images, b):
            keys = [f"img{j}" for j in range(i, i + b)]
            outs.append(dream_tensor(self.backend, self.images[i:i + b], self.cfg, self.dm.spec, keys))
        return torch.cat(outs)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def _timed(job: Job, probe: hardware.MemoryProbe) -> float:
    torch.set_num_threads(job.threads)
    hardware.synchronize(job.device)
    t0 = time.perf_counter()
    with probe:
        job.run()
        hardware.synchronize(job.device)
    return time.perf_counter() - t0


def measure(jobs: list[Job], repeats: int, warmup: int) -> list[dict]:
    """One row per job: medians over ``repeats`` after ``warmup`` runs, the jobs' runs interleaved round-robin.

    Interleaving makes every job see the same machine load (shared CPUs swing a lot), so ratios
    between rows of one run hold even when absolute numbers move.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got {repeats}, {warmup}")
    default_threads = torch.get_num_threads()
    times: dict[int, list[float]] = {id(j): [] for j in jobs}
    mems: dict[int, list[dict]] = {id(j): [] for j in jobs}
    try:
        for j in jobs:
            torch.set_num_threads(j.threads)
            for _ in range(warmup):
                j.run()
        failed: dict[int, str] = {}
        for i in range(repeats):
            for j in (j for j in jobs if id(j) not in failed):
                probe = hardware.MemoryProbe(j.device)
                try:
                    times[id(j)].append(_timed(j, probe))
                except (RuntimeError, ValueError) as exc:  # one backend breaking must not lose the other rows
                    log.warning("%s failed while timed: %s", j.case.key, exc)
                    failed[id(j)] = f"{type(exc).__name__}: {exc}"[:500]
                    continue
                mems[id(j)].append(probe.as_row())
            log.info("round %d/%d done (load %s)", i + 1, repeats, hardware.environment(jobs[0].device)["load_avg_1_5_15"])
        rows = []
        for j in jobs:
            torch.set_num_threads(j.threads)  # the row's env reports the threads it ran with
            rows.append(not_run_row(j.case, "failed", failed[id(j)], j.device) if id(j) in failed
                        else _row(j, times[id(j)], mems[id(j)], repeats, warmup))
        return rows
    finally:
        torch.set_num_threads(default_threads)


def _row(job: Job, times: list[float], mems: list[dict], repeats: int, warmup: int) -> dict:
    case, device = job.case, job.device
    median = statistics.median(times)
    images_per_s = case.n_images / median
    fpi = flops.job_flops_per_image(job.dm.module, case.size, case.size, case.octaves, case.octave_scale,
                                    case.iterations, job.dm.spec.min_size)
    achieved = fpi * images_per_s / 1e12
    peak, peak_source = hardware.device_peak(device, case.precision if case.impl == "dreamfleet" else "fp32")
    mem = {k: max((m[k] for m in mems if m[k] is not None), default=None) for k in mems[0]}
    return dict(
        status="ok", case=case.key, job=case.job_key, **dataclasses.asdict(case), n_images=case.n_images,
        usable_octaves=job.n_oct, layer_resolved=job.cfg.layer, objective=job.cfg.objective,
        weights="random (untrained; throughput only)" if job.cfg.random_weights else "pretrained",
        images_per_s=round(images_per_s, 4), ms_per_step=round(1000.0 * median / job.steps, 3),
        steps_per_run=job.steps, setup_s=job.setup_s, time_s_median=round(median, 4), time_s_all=[round(t, 4) for t in times],
        repeats=repeats, warmup=warmup, gflop_per_image=round(fpi / 1e9, 3), achieved_tflops=round(achieved, 5),
        peak_tflops=round(peak, 4) if peak else None, peak_source=peak_source,
        fraction_of_peak=round(achieved / peak, 5) if peak else None,
        flops_note="forward + input gradient (FlopCounterMode: conv/matmul); the seed's weight gradients not counted",
        **mem, backend_info=job.info, config=config_to_dict(job.cfg), env=hardware.environment(device),
        timestamp=hardware.now_utc(),
    )


def not_run_row(case: Case, status: str, reason: str, device: torch.device) -> dict:
    """A row for a case that was skipped (not available here) or failed (an error)."""
    spec = get_spec(case.model)
    return dict(status=status, reason=reason, case=case.key, job=case.job_key, **dataclasses.asdict(case),
                n_images=case.n_images, layer_resolved=case.layer or spec.default_layer,
                env=hardware.environment(device), timestamp=hardware.now_utc())
