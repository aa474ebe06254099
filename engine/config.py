"""The job's parameters: one plain dataclass, named presets, TOML files and the parameter hash.

Precedence: dataclass defaults < preset < config file < explicit command-line flags.
``param_hash`` covers every field that changes output pixels (not batch size, backend,
device or bookkeeping), so outputs made with other parameters are never mistaken for ours.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from .jobfile import PRESETS, load_toml, read_toml  # noqa: F401  (re-exported: callers import them from here)
from .limits import Limits, check_limits, field_limits, limited
from .vocabulary import (
    COMPILE_MODES,
    GRAD_NORMS,
    INTERPOLATIONS,
    OUTPUT_FORMATS,
    PRECISIONS,
    SMOOTH_MODES,
    STEP_UNITS,
    VIDEO_FLOWS,
)

SMOOTH_SIGMA_MAX = 10.0  # px; --smooth-sigma values lie in [0, SMOOTH_SIGMA_MAX]
LAP_LEVELS_RANGE = (1, 8)  # --lap-levels: bands of the Laplacian pyramid
OCTAVE_SCALE_MAX = 10.0  # --octave-scale lies in (1, OCTAVE_SCALE_MAX]
# smoothing fields a mode does not use are left out of the parameter hash, so the hashes of
# jobs without smoothing (classic, seed, every existing output folder) are what they were before
_SMOOTH_UNUSED = {"none": ("smooth", "smooth_sigma", "lap_levels"), "gaussian": ("lap_levels",),
                  "laplacian": ("smooth_sigma",)}
VIDEO_BLEND_RANGE = (0.0, 1.0)  # --video-blend: share of the previous frame's warped dream detail carried
CRF_RANGE = (0, 51)  # --crf: x264/x265 constant rate factor (0 lossless, 18 visually lossless, 51 worst)
# video fields are hashed only when they differ from their defaults: image jobs keep their hashes
_VIDEO_HASHED = ("video_blend", "video_flow", "frames", "crf", "video_codec")
TILEABLE_OBJECTIVES = ("l2", "channel", "guide")  # sums over positions: tile gradients add up

# fields that do not change the pixels of a result
_NOT_HASHED = {"batch_size", "backend", "device", "onnx", "overwrite", "channels_last", "max_pixels", "output_format",
               "preset", "cache_dir", "compile_mode", "threads", "cpu_lanes", "io_threads", "storage_options",
               "reproducible", "ort_trt", "keep_frames", "video_split_frames"}  # split only at cuts, where the chain restarts
_SECRET_WORDS = ("secret", "token", "password", "key", "credential")  # storage options redacted in reports


@dataclass
class DreamConfig:
    # what is dreamed
    model: str = "bvlc_googlenet"
    layer: str | None = None  # None: the model's default; "inception4c:1.0,inception4d:0.5" for several
    objective: str = "l2"  # l2 | norm | channel | guide | guide-distance
    channels: tuple[int, ...] = ()
    guide: str | None = None  # guide image path for guided objectives
    weights: str | None = None  # local .safetensors / .pth
    random_weights: bool = False
    # the octave ascent
    octaves: int = limited(4, lo=1)
    octave_scale: float = limited(1.4, lo=1.0, hi=OCTAVE_SCALE_MAX, lo_open=True)
    iterations: int = limited(10, lo=1)
    step: float = limited(1.5, lo=0.0, lo_open=True)
    step_units: str = "pixel"  # pixel: step in 0-255 pixel units (Google); normalized: model-input units (seed)
    grad_norm: str = "mean_abs"  # mean_abs: g / mean|g| (Google); l2: g / ||g|| (seed); per image always
    jitter: int = limited(32, lo=0)  # max random roll in pixels, undone after each step
    clamp: str = "pixel"  # "pixel": keep the valid [0,1] pixel range; "LO,HI": clamp in normalized units
    interpolation: str = "bilinear"  # octave resampling
    # gradient smoothing, between the backend's gradient and the update (engine/smoothing.py)
    smooth: str = "none"  # none | gaussian | laplacian
    smooth_sigma: str = "0.5,2"  # gaussian: "START,END" px over an octave's iterations, or one value
    lap_levels: int = limited(4, lo=LAP_LEVELS_RANGE[0], hi=LAP_LEVELS_RANGE[1])  # laplacian: bands (levels - 1 band-pass + the low-pass residual)
    # image sizes
    max_side: int = limited(512, lo=0, note="0: keep")  # downscale so the longer side is at most this (0: keep)
    snap: int = limited(32, lo=1)  # round sides to a multiple of this, so images fall into few shape buckets
    fixed_size: int = limited(0, lo=0, note="0: off")  # >0: resize every image to fixed_size x fixed_size (the seed article does 224)
    max_pixels: int = limited(100_000_000, lo=1)  # larger images are recorded as failures, never decoded
    output_format: str = "same"  # same: input's format and name; else NAME.EXT.<format>
    # tiling (issue 10): octaves larger than one window (tile + 2 * tile_overlap) are dreamed in tiles
    tile: int = limited(0, lo=0, note="0: off, else >= 32")  # tile core side, px (0: off)
    tile_overlap: int = limited(64, lo=0)  # context around each tile whose gradient is discarded, px
    # video (issue 20): frame t of several videos per batch; detail carried along the optical flow
    video_blend: float = limited(0.8, lo=VIDEO_BLEND_RANGE[0], hi=VIDEO_BLEND_RANGE[1])  # each frame starts from its source + this x the previous frame's warped detail
    video_flow: str = "dis"  # dis: OpenCV DIS optical flow; none: independent frames
    frames: str = ""  # "START:STOP" frame range of each video (Python slice, STOP exclusive; empty: all)
    crf: int = limited(18, lo=CRF_RANGE[0], hi=CRF_RANGE[1])  # output quality (constant rate factor)
    video_codec: str = "libx264"  # encoder of the output video (see engine.video.encode.available_codecs)
    keep_frames: bool = False  # keep the dreamed frames (PNG) under OUT/.dreamfleet/video/ after encoding
    video_split_frames: int = limited(9000, lo=0, note="0: never split")  # longer videos: segments at scene cuts
    # execution
    batch_size: int = limited(8, lo=1)
    threads: int = limited(0, lo=0, note="0: one per core")  # torch intra-op threads for an in-process job (0: torch's default, one per core)
    # CPU image batches dreamed on N threads side by side (engine/backends/lanes.py)
    cpu_lanes: int = limited(0, lo=0, hi=64, note="0: automatic, 1: off")
    io_threads: int = limited(0, lo=-1, note="0: automatic, -1: inline")  # decode and write threads, each pool (0: Ray's CPUs for the actor, else the cores)
    seed: int = limited(0, lo=0)
    precision: str = "fp32"
    backend: str = "eager"
    device: str = "auto"
    onnx: str | None = None
    channels_last: bool | None = None  # None: auto (on for CUDA and CPU bf16; off for CPU fp32, where NCHW is as fast)
    reproducible: bool = False  # batch-invariant dreams: batch-1 kernels per image + torch deterministic algorithms
    compile_mode: str = "auto"  # --backend compile: auto = reduce-overhead (CUDA graphs) on CUDA, default on CPU
    ort_trt: bool = False  # --backend onnxruntime on CUDA: put ONNX Runtime's TensorRT execution provider first
    overwrite: bool = False
    preset: str | None = None
    # fsspec options for URL inputs/outputs (the job file's [storage] table); never hashed, secrets never reported
    storage_options: dict = field(default_factory=dict)

    def validate(self) -> "DreamConfig":
        self._coerce_types()
        if self.layer is None:  # the same job whether the default layer is named or not
            from .models import get_spec

            self.layer = get_spec(self.model).default_layer
        _choice("precision", self.precision, PRECISIONS)
        _choice("compile_mode", self.compile_mode, COMPILE_MODES)
        _choice("step_units", self.step_units, STEP_UNITS)
        _choice("grad_norm", self.grad_norm, GRAD_NORMS)
        _choice("interpolation", self.interpolation, INTERPOLATIONS)
        _choice("output_format", self.output_format, OUTPUT_FORMATS)
        check_limits(self)  # every number finite and inside its documented range (the fields' Limits)
        self.clamp_range()  # parses
        self._validate_layer_weights()
        self._validate_smoothing()
        self._validate_tiling()
        self._validate_video()
        try:
            self.channels = tuple(int(c) for c in self.channels)
        except (TypeError, ValueError, OverflowError):  # e.g. channels = [nan] or [inf] in a job file
            raise ValueError(f"channels must be channel indices (integers >= 0), got {self.channels!r} "
                             "(--channels)") from None
        if not isinstance(self.storage_options, dict):
            raise ValueError(f"storage_options must be a table of fsspec options, got {self.storage_options!r}")
        return self

    def _validate_smoothing(self) -> None:
        _choice("smooth", self.smooth, SMOOTH_MODES)
        self.smooth_sigma = ",".join(f"{s:g}" for s in self.sigma_range())  # canonical, for the hash

    def sigma_range(self) -> tuple[float, float]:
        """(start, end) Gaussian sigma in px; one value means a constant sigma."""
        raw = self.smooth_sigma
        parts = list(raw) if isinstance(raw, (list, tuple)) else str(raw).split(",")
        valid = f"'START,END' or 'SIGMA', each in [0, {SMOOTH_SIGMA_MAX:g}] px (e.g. '0.5,2')"
        try:
            values = [float(v) for v in parts]
        except (TypeError, ValueError):
            raise ValueError(f"smooth_sigma must be {valid}, got {raw!r} (--smooth-sigma)") from None
        if len(values) == 1:
            values *= 2
        if len(values) != 2 or not all(0.0 <= v <= SMOOTH_SIGMA_MAX for v in values):
            raise ValueError(f"smooth_sigma must be {valid}, got {raw!r} (--smooth-sigma)")
        return values[0], values[1]

    def _validate_tiling(self) -> None:
        if self.tile and self.tile < 32:
            raise ValueError(f"tile must be 0 (off) or >= 32 px, got {self.tile}")
        if self.tile:
            from .models import get_spec

            min_size = get_spec(self.model).min_size
            if self.tile + 2 * self.tile_overlap < min_size:
                raise ValueError(f"tile window {self.tile + 2 * self.tile_overlap} px (tile + 2 x tile_overlap) is below "
                                 f"{self.model}'s minimum input of {min_size} px")
        if self.tile and self.reproducible:
            raise ValueError("--reproducible cannot be combined with --tile (tiles of several images share batches); "
                             "valid: one of them")
        if self.tile and self.objective not in TILEABLE_OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} cannot be tiled (it is not a sum over positions); "
                             f"with --tile use one of: {', '.join(TILEABLE_OBJECTIVES)}")

    def _validate_video(self) -> None:
        _choice("video_flow", self.video_flow, VIDEO_FLOWS)
        self.frame_range()  # parses
        if self.video_codec != "libx264":  # the wheel's FFmpeg (and for nvenc the GPU) decides: opened here
            from .video.encode import check_codec

            why = check_codec(self.video_codec)
            if why:
                raise ValueError(f"video_codec: {why}")

    def frame_range(self) -> tuple[int, int | None]:
        """(start, stop or None) of ``frames`` ("START:STOP", either side may be empty)."""
        text = str(self.frames or ":")
        try:
            lo, hi = text.split(":")
            start, stop = int(lo or 0), (int(hi) if hi else None)
        except ValueError:
            raise ValueError(f"frames must be 'START:STOP' (e.g. '0:120', '30:'), got {self.frames!r}") from None
        if start < 0 or (stop is not None and stop <= start):
            raise ValueError(f"frames must be 'START:STOP' with 0 <= START < STOP, got {self.frames!r}")
        return start, stop

    def _coerce_types(self) -> None:
        """TOML and Python callers may give 2 for 2.0 or "4" for 4: convert, or say which field is wrong."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = {"int": int, "float": float, "bool": bool}.get(str(f.type).split(" |")[0])
            if kind is None or value is None:
                continue
            if kind is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"{f.name} must be true or false, got {value!r}")
                continue
            try:
                converted = kind(value)
            except (TypeError, ValueError, OverflowError):  # int(inf) overflows, int(nan) is a ValueError
                raise ValueError(f"{f.name} must be {'an integer' if kind is int else 'a number'}, "
                                 f"got {value!r}") from None
            if kind is int and isinstance(value, float) and converted != value:
                raise ValueError(f"{f.name} must be an integer, got {value!r}")
            setattr(self, f.name, converted)

    def clamp_range(self) -> tuple[float, float] | None:
        """None for the pixel range, else (lo, hi) in normalized units."""
        if self.clamp == "pixel":
            return None
        try:
            lo, hi = (float(v) for v in str(self.clamp).split(","))
        except ValueError:
            raise ValueError(f"clamp must be 'pixel' or 'LO,HI' (e.g. '-3,3'), got {self.clamp!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"clamp LO and HI must be finite numbers, got {self.clamp!r} (--clamp)")
        if lo >= hi:
            raise ValueError(f"clamp LO must be < HI, got {self.clamp!r}")
        return lo, hi

    def _validate_layer_weights(self) -> None:
        """``--layer NAME:WEIGHT,...``: each weight finite, not all zero (a zero objective has no gradient)."""
        from .objectives import parse_layers

        weights = [w for _, w in parse_layers(self.layer)]
        if not all(math.isfinite(w) for w in weights) or not any(weights):
            raise ValueError(f"layer weights must be finite numbers, not all 0, got {self.layer!r} (--layer)")

    def hashed_params(self) -> dict:
        unused = _NOT_HASHED.union(_SMOOTH_UNUSED.get(self.smooth, ()))
        if not self.tile:  # untiled jobs keep the hash they had before tiling existed
            unused = unused.union({"tile", "tile_overlap"})
        unused = unused.union(k for k in _VIDEO_HASHED if getattr(self, k) == _DEFAULTS[k])
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in unused}

    def param_hash(self) -> str:
        """Short stable hash of everything that changes output pixels."""
        blob = json.dumps(self.hashed_params(), sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DreamConfig)}

def _choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")


def field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(DreamConfig)}


def make_config(preset: str | None = None, file_values: dict | None = None, overrides: dict | None = None) -> DreamConfig:
    """defaults < preset < file < overrides (None values in overrides are ignored)."""
    values: dict = {}
    file_values = dict(file_values or {})
    preset = (overrides or {}).get("preset") or preset or file_values.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
        values["preset"] = preset
    values.update(file_values)
    if preset is not None:
        values["preset"] = preset  # the preset that was applied, whatever the file said
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = set(values) - field_names()
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)}; valid: {', '.join(sorted(field_names()))}")
    if "channels" in values and isinstance(values["channels"], str):
        values["channels"] = tuple(int(c) for c in values["channels"].split(",") if c.strip())
    return DreamConfig(**values).validate()


def config_to_dict(cfg: DreamConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["channels"] = list(cfg.channels)
    d["storage_options"] = _redacted(cfg.storage_options)
    return d


def _redacted(options: dict) -> dict:
    return {k: _redacted(v) if isinstance(v, dict) else
            ("***" if any(w in k.lower() for w in _SECRET_WORDS) else v) for k, v in options.items()}


__all__ = ["CRF_RANGE", "VIDEO_BLEND_RANGE", "DreamConfig", "GRAD_NORMS", "INTERPOLATIONS", "LAP_LEVELS_RANGE", "Limits", "OCTAVE_SCALE_MAX", "OUTPUT_FORMATS",
           "PRECISIONS", "PRESETS", "SMOOTH_MODES", "SMOOTH_SIGMA_MAX", "STEP_UNITS", "check_limits", "config_to_dict",
           "field", "field_limits", "limited", "load_toml", "make_config", "read_toml"]
