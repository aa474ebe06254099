"""``dreamfleet bench --simulate DEVICE``: the real job path against a roofline-simulated GPU.

For each model and setting (eager / graphs / fused, :mod:`benchmarks.roofline`) the standard job
(3 octaves x 1.4 from 512 px, 10 iterations) runs through the real ``run_job``: planning, decode,
the runner, the octave loop and its jitter/update (on the ``meta`` device: real host dispatch, no
arithmetic), the uint8 download, encode and atomic writes. Only the gradient step is replaced by
``SimulatedDeviceBackend``, whose device clock advances by the roofline time of that (N, H, W),
computed from kernel/FLOP/byte counts measured on meta tensors of the real truncated model.

Rows are labelled ``simulated``: predicted images/s (wall clock of the job), predicted device
utilization (modelled busy time / wall), the device-bound images/s (busy time only) and where the
device time goes (compute-bound kernels, memory-bound kernels, inter-kernel gaps).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from .rows import append_rows

log = logging.getLogger(__name__)

MODELS = {"bvlc_googlenet": ("inception4c", "l2"), "vgg16": ("features.30", "norm")}
GOALS = {"bvlc_googlenet": 300.0, "vgg16": 70.0}  # images/s, issue 9
STANDARD = dict(octaves=3, octave_scale=1.4, iterations=10, fixed_size=512)


def _inputs(folder: Path, n: int, size: int) -> list[str]:
    """n JPEG photos (the sample photos, cycled and cropped to size x size)."""
    from PIL import Image

    from .run import load_images

    folder.mkdir(parents=True, exist_ok=True)
    imgs = load_images(min(n, 4), size)  # [k,3,size,size] in [0,1]
    paths = []
    for i in range(n):
        arr = (imgs[i % len(imgs)].permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
        p = folder / f"img{i:04d}.jpg"
        Image.fromarray(arr).save(p, quality=95)
        paths.append(str(p))
    return paths


def _job_config(model: str, batch: int, precision: str):
    from dreamfleet.engine.config import make_config

    layer, objective = MODELS[model]
    return make_config("classic", overrides=dict(model=model, layer=layer, objective=objective, batch_size=batch,
                                                 precision=precision, device="meta", threads=1,
                                                 random_weights=model != "bvlc_googlenet", **STANDARD))


def simulate_case(device_key: str, model: str, setting: str, batch: int, images: int, precision: str,
                  work: Path) -> dict:
    from dreamfleet.engine.backends.eager import EagerBackend
    from dreamfleet.engine.build import build_dream_model
    from dreamfleet.engine.job import run_job
    from dreamfleet.engine.octaves import plan_shapes

    from .fastmeta import fast_meta_kernels
    from .roofline import COMPUTE_EFF, DEVICES, GAP_S, GRAPH_LAUNCH_S, LAUNCH_S, MEM_EFF, StepModel, measure_step
    from .simdevice import SimulatedDeviceBackend

    device = DEVICES[device_key]
    cfg = _job_config(model, batch, precision)
    dm = build_dream_model(cfg.model, cfg.layer, cfg.objective, random_weights=True)  # counting only
    counter = EagerBackend(dm.module, torch.device("meta"), precision, channels_last=True)
    measured: dict = {}

    def measure(n, h, w):
        if (n, h, w) not in measured:
            measured[(n, h, w)] = measure_step(counter, cfg, dm.spec, n, h, w)
        return measured[(n, h, w)]

    sm = StepModel(device, precision, setting, measure)
    shapes = plan_shapes([(512, 512)] * images, batch, cfg.octaves, cfg.octave_scale, dm.spec.min_size)
    per_image = {"device_s": 0.0, "compute_bound_s": 0.0, "memory_bound_s": 0.0, "gaps_s": 0.0, "kernels": 0,
                 "flops": 0, "bytes": 0}
    full = [s for s in shapes if s[0] == batch] or shapes
    for n, h, w in full:  # one image's share of a full batch, every octave x iterations
        b = sm.breakdown(n, h, w)
        for k in per_image:
            per_image[k] += b[k] * cfg.iterations / n
    for s in shapes:
        sm.breakdown(*s)  # counted before the clock starts
    backends = []

    def factory(dm_, cfg_, dev_):
        be = SimulatedDeviceBackend(sm.step_seconds, label=f"{device.name} {setting}", host_seconds=sm.host_seconds)
        backends.append(be)
        return be

    folder = work / f"{model}-{setting}"
    paths = _inputs(folder / "in", images, 512)
    t0 = time.perf_counter()
    with fast_meta_kernels():  # the loop's meta ops cost dispatch, not torch._refs Python (see fastmeta)
        report = run_job(cfg, paths, folder / "out", factory, progress=False)
    wall = report.work_seconds or (time.perf_counter() - t0)
    done = sum(1 for r in report.records if r.status == "done")
    dev = backends[0]
    busy = dev.busy_seconds
    span = dev.device_clock - dev.first_step_at  # first step queued -> last step done
    fill = dev.first_step_at - dev.prepared_at  # the first batch's decode: the device has nothing yet
    drain = max(0.0, dev.prepared_at + wall - dev.device_clock)  # the last batch's writes
    host = {k: v for k, v in report.extra.get("host_ms_per_image", {}).items() if v is not None}
    dev_s = per_image["device_s"]
    return {
        "label": "simulated", "device": device.name, "device_source": device.source, "model": model,
        "layer": cfg.layer, "setting": setting, "precision": precision, "batch": batch, "images": images,
        "done": done, "job": "3 octaves x 1.4 from 512x512, 10 iterations",
        "weights": "vendored BVLC" if model == "bvlc_googlenet" else "random (throughput only)",
        "predicted_images_per_s": round(done / wall, 1), "predicted_device_utilization": round(busy / wall, 3),
        "device_bound_images_per_s": round(1.0 / dev_s, 1), "goal_images_per_s": GOALS.get(model),
        "per_image_step_work": {"kernels_per_step": round(per_image["kernels"] / cfg.octaves / cfg.iterations * batch),
                                "tflop": round(per_image["flops"] / 1e12, 3), "gb_moved": round(per_image["bytes"] / 1e9, 2)},
        "device_time_split": {k: round(per_image[k] / dev_s, 3) for k in ("compute_bound_s", "memory_bound_s", "gaps_s")},
        "device_utilization_between_first_and_last_step": round(busy / span, 3),
        "wall_split": {"fill_s": round(fill, 3), "device_span_s": round(span, 3), "drain_s": round(drain, 3),
                       "device_idle_in_span_s": round(dev.idle_seconds, 3),
                       "note": "fill: first batch's decode before the first step; drain: last batch's writes "
                               "after the last step; idle: the host was late between steps"},
        "host_ms_per_image": dict(host, note="host time per image by stage, summed over threads (decode and "
                                             "resize in decode threads, loop and device wait on the runner's "
                                             "thread, encode and write + fsync in writer threads)"),
        "io_threads": report.extra.get("io_threads"),
        "load_average_1m": round(os.getloadavg()[0], 2), "cpu_cores": os.cpu_count(),
        "wall_s": round(wall, 3), "device_busy_s": round(busy, 3),
        "model_params": {"compute_eff": COMPUTE_EFF, "mem_eff": MEM_EFF, "gap_s": GAP_S[setting],
                         "launch_s": LAUNCH_S if setting == "eager" else GRAPH_LAUNCH_S},
        "host": "this machine's CPU runs the real host path (decode, loop dispatch on meta, encode, write)",
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run_simulation(device_key: str, models: tuple[str, ...], settings: tuple[str, ...], batch: int, images: int,
                   precision: str, out: Path) -> list[dict]:
    from .roofline import DEVICES, SETTINGS

    if device_key not in DEVICES:
        raise ValueError(f"unknown simulated device {device_key!r}; valid: {', '.join(DEVICES)}")
    bad = [s for s in settings if s not in SETTINGS] + [m for m in models if m not in MODELS]
    if bad:
        raise ValueError(f"unknown setting/model {bad}; valid settings: {', '.join(SETTINGS)}; models: {', '.join(MODELS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dreamfleet-sim-") as tmp:
        for model in models:
            for setting in settings:
                row = simulate_case(device_key, model, setting, batch, images, precision, Path(tmp))
                log.info("%s", row)
                rows.append(row)
    append_rows(out / f"simulated_{device_key}.jsonl", rows, sort_keys=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| model | setting | prec | batch | images | predicted images/s | goal | predicted device util. (between first "
            "and last step) | device-bound images/s | GB/image | device time: compute / memory / gaps "
            "| host ms/image: decode+resize / loop / encode / write |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        split, h = r["device_time_split"], r["host_ms_per_image"]
        lines.append(f"| {r['model']} | {r['setting']} | {r['precision']} | {r['batch']} | {r['images']} "
                     f"| {r['predicted_images_per_s']} | {r['goal_images_per_s']} | {r['predicted_device_utilization']} "
                     f"({r['device_utilization_between_first_and_last_step']}) | {r['device_bound_images_per_s']} "
                     f"| {r['per_image_step_work']['gb_moved']} "
                     f"| {split['compute_bound_s']:.2f} / {split['memory_bound_s']:.2f} / {split['gaps_s']:.2f} "
                     f"| {h['decode'] + h['resize']:.1f} / {h['loop']:.1f} / {h['encode']:.1f} / {h['write']:.1f} |")
    load = f", load average {rows[0]['load_average_1m']} on {rows[0]['cpu_cores']} cores" if rows else ""
    return "**simulated** (" + (rows[0]["device"] if rows else "") + load + ")\n\n" + "\n".join(lines)
