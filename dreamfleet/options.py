"""The dream options shared by ``dreamfleet dream`` and ``dreamfleet run``, and config resolution.

Every option defaults to None on the parser so that only flags the user typed override
the preset and the config file; the help shows the effective default.
"""
from __future__ import annotations

import argparse
import dataclasses

from dreamfleet.backends import BACKENDS
from dreamfleet.engine.config import (
    GRAD_NORMS,
    INTERPOLATIONS,
    OUTPUT_FORMATS,
    PRECISIONS,
    PRESETS,
    STEP_UNITS,
    DreamConfig,
    load_toml,
    make_config,
)
from dreamfleet.engine.models import list_models
from dreamfleet.engine.objectives import OBJECTIVE_KINDS

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DreamConfig)}


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
        g.add_argument(flag, dest=field, default=None, help=f"{help} (default: {shown})", **kw)

    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or globs")
    p.add_argument("-o", "--output", required=True, help="output folder; results mirror the inputs' relative paths")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="named parameter set: classic (Google 2015, BVLC GoogLeNet) or seed (the seed article)")
    p.add_argument("--config", default=None, metavar="FILE.toml", help="job file; its keys are the options below")
    g = p.add_argument_group("what is dreamed")
    opt("--model", "model", "network", choices=list_models())
    opt("--layer", "layer", "layer, or weighted layers 'inception4c:1.0,inception4d:0.5'")
    opt("--objective", "objective", "what grows", choices=OBJECTIVE_KINDS)
    opt("--channels", "channels", "channel indices for --objective channel, e.g. 3,17", type=_channels)
    opt("--guide", "guide", "guide image for --objective guide / guide-distance")
    opt("--weights", "weights", "local weights file (.safetensors / .pth)")
    g.add_argument("--random-weights", dest="random_weights", action="store_true", default=None,
                   help="untrained random weights, for smoke tests; recorded in every output")
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
    g = p.add_argument_group("image sizes and files")
    opt("--max-side", "max_side", "longest side dreamed, px (0: keep)", type=int)
    opt("--snap", "snap", "round sides to a multiple of this, px", type=int)
    opt("--fixed-size", "fixed_size", "resize every image to N x N (0: off)", type=int)
    opt("--max-pixels", "max_pixels", "larger inputs are recorded as failures", type=int)
    opt("--output-format", "output_format", "same = the input's name and format", choices=OUTPUT_FORMATS)
    g.add_argument("--overwrite", action="store_true", default=None, help="redo outputs that exist (default: skip them)")
    g = p.add_argument_group("tiling (large images at full resolution)")
    opt("--tile", "tile", "dream octaves larger than one window (tile + 2 x overlap) in PX x PX tiles, "
        "--batch-size tiles per step (0: off)", type=int)
    opt("--tile-overlap", "tile_overlap", "context around each tile whose gradient is discarded, px", type=int)
    g = p.add_argument_group("execution")
    opt("--batch-size", "batch_size", "images per forward/backward", type=int)
    opt("--threads", "threads", "torch CPU threads for `dream` (0: one per core); `run` uses --threads-per-worker",
        type=int)
    opt("--seed", "seed", "job seed; each image's jitter stream derives from it and the image's path", type=int)
    opt("--precision", "precision", "fp16 only on CUDA", choices=PRECISIONS)
    opt("--backend", "backend", "gradient backend", choices=BACKENDS)
    opt("--device", "device", "auto, cpu, cuda, cuda:N")
    opt("--onnx", "onnx", "exported gradient graph for --backend onnxruntime/tensorrt")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None,
                   help="keep NCHW memory format (default: channels_last)")
    g.add_argument("--progress", dest="progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a TTY)")


def config_from_args(args: argparse.Namespace) -> DreamConfig:
    """defaults < --preset < --config file < explicit flags."""
    file_values = load_toml(args.config) if args.config else {}
    overrides = {k: getattr(args, k, None) for k in _DEFAULTS if k != "preset"}
    return make_config(args.preset, file_values, overrides)
