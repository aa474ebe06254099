"""The dream options shared by ``dreamfleet dream`` and ``dreamfleet run``, and config resolution.

Every option defaults to None on the parser so that only flags the user typed override
the preset and the config file; the help shows the effective default.
"""
from __future__ import annotations

import argparse
import dataclasses

from dreamfleet.engine.config import (
    CRF_RANGE,
    LAP_LEVELS_RANGE,
    PRESETS,
    SMOOTH_SIGMA_MAX,
    VIDEO_BLEND_RANGE,
    DreamConfig,
    field_limits,
    load_toml,
    make_config,
)
from dreamfleet.engine.models import list_models
from dreamfleet.engine.vocabulary import (
    BACKENDS,
    COMPILE_MODES,
    GRAD_NORMS,
    INTERPOLATIONS,
    OBJECTIVE_KINDS,
    OUTPUT_FORMATS,
    PRECISIONS,
    SMOOTH_MODES,
    STEP_UNITS,
    VIDEO_FLOWS,
)

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DreamConfig)}
_LIMITS = field_limits(DreamConfig)  # numeric options' ranges, shown in --help and checked in DreamConfig.validate


def _channels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated channel indices, got {text!r}") from None


def add_dream_options(p: argparse.ArgumentParser) -> None:
    g = p

    def opt(flag: str, field: str, help: str, **kw) -> None:
        default = _DEFAULTS[field]
        shown = "the model's default layer" if field == "layer" else default
        valid = f"; valid: {_LIMITS[field].describe(kw.get('type') is int)}" if field in _LIMITS else ""
        g.add_argument(flag, dest=field, default=None, help=f"{help} (default: {shown}{valid})", **kw)

    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or globs")
    p.add_argument("-o", "--output", required=True, help="output folder; results mirror the inputs' relative paths")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="named parameter set: classic (Google 2015, BVLC GoogLeNet), seed (the seed article) "
                        "or smooth (classic + Laplacian gradient normalization)")
    p.add_argument("--config", default=None, metavar="FILE.toml", help="job file; its keys are the options below")
    g = p.add_argument_group("what is dreamed")
    opt("--model", "model", "network", choices=list_models())
    opt("--layer", "layer", "layer, or weighted layers 'inception4c:1.0,inception4d:0.5'")
    opt("--objective", "objective", "what grows", choices=OBJECTIVE_KINDS)
    opt("--channels", "channels", "channel indices for --objective channel, e.g. 3,17", type=_channels)
    opt("--guide", "guide", "guide image for --objective guide / guide-distance")
    opt("--weights", "weights", "local weights file (.safetensors / .pth)")
    g.add_argument("--random-weights", dest="random_weights", action=argparse.BooleanOptionalAction, default=None,
                   help="untrained random weights, for smoke tests; recorded in every output (default: off)")
    g = p.add_argument_group("the octave ascent")
    opt("--octaves", "octaves", "octave count", type=int)
    opt("--octave-scale", "octave_scale", "size ratio between octaves", type=float)
    opt("--iterations", "iterations", "ascent steps per octave", type=int)
    opt("--step", "step", "step size, in --step-units", type=float)
    opt("--step-units", "step_units", "pixel = 0-255 pixel units; normalized = model input units", choices=STEP_UNITS)
    opt("--grad-norm", "grad_norm", "per-image gradient normalization", choices=GRAD_NORMS)
    opt("--jitter", "jitter", "max random roll in pixels", type=int)
    opt("--clamp", "clamp", "'pixel' (valid pixel range) or 'LO,HI' in normalized units")
    opt("--interpolation", "interpolation", "octave resampling", choices=INTERPOLATIONS)
    g = p.add_argument_group("gradient smoothing (between the backend's gradient and the update)")
    opt("--smooth", "smooth", "gaussian = blurred gradient; laplacian = each Laplacian band at unit std (lapnorm)",
        choices=SMOOTH_MODES)
    opt("--smooth-sigma", "smooth_sigma", f"gaussian sigma in px, START,END over each octave's iterations "
        f"(or one value), each in [0, {SMOOTH_SIGMA_MAX:g}]")
    opt("--lap-levels", "lap_levels", f"laplacian: pyramid bands, {LAP_LEVELS_RANGE[0]}..{LAP_LEVELS_RANGE[1]}",
        type=int)
    g = p.add_argument_group("image sizes and files")
    opt("--max-side", "max_side", "longest side dreamed, px (0: keep)", type=int)
    opt("--snap", "snap", "round sides to a multiple of this, px", type=int)
    opt("--fixed-size", "fixed_size", "resize every image to N x N (0: off)", type=int)
    opt("--max-pixels", "max_pixels", "larger inputs are recorded as failures", type=int)
    opt("--output-format", "output_format", "same = the input's name and format", choices=OUTPUT_FORMATS)
    g.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=None,
                   help="redo outputs that exist (default: skip them)")
    g = p.add_argument_group("tiling (large images at full resolution)")
    opt("--tile", "tile", "dream octaves larger than one window (tile + 2 x overlap) in PX x PX tiles, "
        "--batch-size tiles per step (0: off)", type=int)
    opt("--tile-overlap", "tile_overlap", "context around each tile whose gradient is discarded, px", type=int)
    g = p.add_argument_group("video (mp4, mov, mkv, webm, avi: frame t of several videos per batch)")
    opt("--video-blend", "video_blend", f"share of the previous frame's dream detail, warped along the optical flow, "
        f"each frame starts from, {VIDEO_BLEND_RANGE[0]:g}..{VIDEO_BLEND_RANGE[1]:g} (0: independent frames)",
        type=float)
    opt("--video-flow", "video_flow", "dis = OpenCV DIS optical flow; none = independent frames", choices=VIDEO_FLOWS)
    opt("--frames", "frames", "frame range START:STOP of each video (STOP exclusive, either may be empty)")
    opt("--crf", "crf", f"output quality, {CRF_RANGE[0]}..{CRF_RANGE[1]} (lower: better, larger)", type=int)
    opt("--video-codec", "video_codec", "output encoder, one the installed FFmpeg has (libx264, libx265, "
        "libvpx-vp9, libsvtav1, mpeg4, h264_nvenc on NVIDIA machines...)")
    opt("--video-split-frames", "video_split_frames", "a video longer than this many frames is split at scene cuts "
        "into segments dreamed in parallel (0: never split)", type=int)
    g.add_argument("--keep-frames", dest="keep_frames", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the dreamed frames (PNG) under OUT/.dreamfleet/video/ after encoding (default: off)")
    g = p.add_argument_group("execution")
    opt("--batch-size", "batch_size", "images per forward/backward", type=int)
    opt("--threads", "threads", "torch CPU threads for `dream` (0: one per core); `run` uses --threads-per-worker",
        type=int)
    opt("--cpu-lanes", "cpu_lanes", "CPU: dream N batches (or chunks of a batch) side by side, each lane on "
        "threads / N cores; same results (0: 2 on >= 2 cores, 1: off; untiled fp32/fp64 eager image batches only)",
        type=int)
    opt("--io-threads", "io_threads", "decode threads and write threads beside the device loop (0: the CPUs Ray "
        "gave the worker, else the machine's cores; -1: inline, no overlap)", type=int)
    opt("--seed", "seed", "job seed; each image's jitter stream derives from it and the image's path", type=int)
    opt("--precision", "precision", "fp16 only on CUDA; auto = bf16 where the device has it natively (CUDA sm80+, "
        "CPU AVX512-BF16/AMX), else fp32", choices=PRECISIONS)
    opt("--backend", "backend", "gradient backend", choices=BACKENDS)
    opt("--device", "device", "auto, cpu, cuda, cuda:N")
    opt("--compile-mode", "compile_mode", "--backend compile: torch.compile mode; auto = reduce-overhead (CUDA "
        "graphs) on CUDA, default on CPU; graphs = explicit whole-step CUDA graph per shape", choices=COMPILE_MODES)
    g.add_argument("--ort-trt", dest="ort_trt", action="store_true", default=None,
                   help="--backend onnxruntime on CUDA: use ONNX Runtime's TensorRT execution provider (default: off)")
    opt("--onnx", "onnx", "exported gradient graph for --backend onnxruntime/tensorrt")
    g.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on for CUDA and CPU bf16, off for CPU fp32)")
    g.add_argument("--reproducible", dest="reproducible", action=argparse.BooleanOptionalAction, default=None,
                   help="an image's dream does not depend on its batch: each image runs batch-1 kernels, torch "
                        "deterministic algorithms (default: off)")
    g.add_argument("--progress", dest="progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a TTY)")


def config_from_args(args: argparse.Namespace) -> DreamConfig:
    """defaults < --preset < --config file < explicit flags."""
    file_values = load_toml(args.config) if args.config else {}
    overrides = {k: getattr(args, k, None) for k in _DEFAULTS if k != "preset"}
    return make_config(args.preset, file_values, overrides)


__all__ = ["add_dream_options", "config_from_args"]
