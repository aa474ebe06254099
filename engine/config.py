"""The job's parameters: one plain dataclass, named presets, TOML files and the parameter hash.

Precedence: dataclass defaults < preset < config file < explicit command-line flags.
``param_hash`` covers every field that changes output pixels (not batch size, backend,
device or bookkeeping), so outputs made with other parameters are never mistaken for ours.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

PRECISIONS = ("fp32", "fp64", "bf16", "fp16")
STEP_UNITS = ("pixel", "normalized")
GRAD_NORMS = ("mean_abs", "l2")
INTERPOLATIONS = ("bilinear", "nearest")
OUTPUT_FORMATS = ("same", "png", "jpeg", "webp", "tiff")
TILEABLE_OBJECTIVES = ("l2", "channel", "guide")  # sums over positions: tile gradients add up

# fields that do not change the pixels of a result
_NOT_HASHED = {"batch_size", "backend", "device", "onnx", "overwrite", "channels_last", "max_pixels", "output_format",
               "preset", "cache_dir", "compile_mode", "threads"}


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
    octaves: int = 4
    octave_scale: float = 1.4
    iterations: int = 10
    step: float = 1.5
    step_units: str = "pixel"  # pixel: step in 0-255 pixel units (Google); normalized: model-input units (seed)
    grad_norm: str = "mean_abs"  # mean_abs: g / mean|g| (Google); l2: g / ||g|| (seed); per image always
    jitter: int = 32  # max random roll in pixels, undone after each step
    clamp: str = "pixel"  # "pixel": keep the valid [0,1] pixel range; "LO,HI": clamp in normalized units
    interpolation: str = "bilinear"  # octave resampling
    # image sizes
    max_side: int = 512  # downscale so the longer side is at most this (0: keep)
    snap: int = 32  # round sides to a multiple of this, so images fall into few shape buckets
    fixed_size: int = 0  # >0: resize every image to fixed_size x fixed_size (the seed article does 224)
    max_pixels: int = 100_000_000  # larger images are recorded as failures, never decoded
    output_format: str = "same"  # same: input's format and name; else NAME.EXT.<format>
    # tiling (issue 10): octaves larger than one window (tile + 2 * tile_overlap) are dreamed in tiles
    tile: int = 0  # tile core side, px (0: off)
    tile_overlap: int = 64  # context around each tile whose gradient is discarded, px
    # execution
    batch_size: int = 8
    threads: int = 0  # torch intra-op threads for an in-process job (0: torch's default, one per core)
    seed: int = 0
    precision: str = "fp32"
    backend: str = "eager"
    device: str = "auto"
    onnx: str | None = None
    channels_last: bool = True
    overwrite: bool = False
    preset: str | None = None

    def validate(self) -> "DreamConfig":
        self._coerce_types()
        if self.layer is None:  # the same job whether the default layer is named or not
            from .models import get_spec

            self.layer = get_spec(self.model).default_layer
        _choice("precision", self.precision, PRECISIONS)
        _choice("step_units", self.step_units, STEP_UNITS)
        _choice("grad_norm", self.grad_norm, GRAD_NORMS)
        _choice("interpolation", self.interpolation, INTERPOLATIONS)
        _choice("output_format", self.output_format, OUTPUT_FORMATS)
        for name in ("octaves", "iterations", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.octave_scale <= 1.0:
            raise ValueError(f"octave_scale must be > 1, got {self.octave_scale}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's default), got {self.threads}")
        if self.jitter < 0 or self.snap < 1 or self.max_side < 0 or self.fixed_size < 0:
            raise ValueError("jitter, max_side and fixed_size must be >= 0 and snap >= 1")
        self.clamp_range()  # parses
        self._validate_tiling()
        self.channels = tuple(int(c) for c in self.channels)
        return self

    def _validate_tiling(self) -> None:
        if self.tile < 0 or self.tile_overlap < 0:
            raise ValueError(f"tile and tile_overlap must be >= 0 (tile 0: off), got {self.tile}, {self.tile_overlap}")
        if self.tile and self.tile < 32:
            raise ValueError(f"tile must be 0 (off) or >= 32 px, got {self.tile}")
        if self.tile:
            from .models import get_spec

            min_size = get_spec(self.model).min_size
            if self.tile + 2 * self.tile_overlap < min_size:
                raise ValueError(f"tile window {self.tile + 2 * self.tile_overlap} px (tile + 2 x tile_overlap) is below "
                                 f"{self.model}'s minimum input of {min_size} px")
        if self.tile and self.objective not in TILEABLE_OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} cannot be tiled (it is not a sum over positions); "
                             f"with --tile use one of: {', '.join(TILEABLE_OBJECTIVES)}")

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
            except (TypeError, ValueError):
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
        if lo >= hi:
            raise ValueError(f"clamp LO must be < HI, got {self.clamp!r}")
        return lo, hi

    def hashed_params(self) -> dict:
        params = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_HASHED}
        if not self.tile:  # untiled jobs keep the hash they had before tiling existed
            params.pop("tile", None)
            params.pop("tile_overlap", None)
        return params

    def param_hash(self) -> str:
        """Short stable hash of everything that changes output pixels."""
        blob = json.dumps(self.hashed_params(), sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


PRESETS: dict[str, dict] = {
    # Google's 2015 deepdream notebook, translated into the model's normalized input space
    "classic": dict(model="bvlc_googlenet", layer="inception4c", objective="l2", octaves=4, octave_scale=1.4,
                    iterations=10, step=1.5, step_units="pixel", grad_norm="mean_abs", jitter=32, clamp="pixel",
                    interpolation="bilinear"),
    # the seed article's dream(), quirks included
    "seed": dict(model="vgg16", layer="features.30", objective="norm", octaves=3, octave_scale=1.4, iterations=20,
                 step=0.1, step_units="normalized", grad_norm="l2", jitter=0, clamp="-3,3", interpolation="nearest",
                 fixed_size=224),
}


def _choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")


def field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(DreamConfig)}


def load_toml(path: str | Path) -> dict:
    """Read a job file: top-level keys are DreamConfig fields (dashes allowed); [dream] table also accepted."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    data = dict(data.get("dream", {}), **{k: v for k, v in data.items() if not isinstance(v, dict)})
    return {k.replace("-", "_"): v for k, v in data.items()}


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
    return d


__all__ = ["DreamConfig", "PRESETS", "make_config", "load_toml", "config_to_dict", "field"]
