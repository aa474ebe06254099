"""Where a job's values come from besides the command line: named presets and TOML job files.

``engine.config.make_config`` layers them: dataclass defaults < preset < job file < flags.
"""
from __future__ import annotations

from pathlib import Path

import tomllib

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
# classic with the gradient normalized per Laplacian band (the TensorFlow notebook's lapnorm)
PRESETS["smooth"] = dict(PRESETS["classic"], smooth="laplacian", lap_levels=4)



def read_toml(path: str | Path) -> dict:
    """The raw TOML table of ``path``; a missing or invalid file is a ValueError naming it (one line)."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"config file {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path}: invalid TOML: {str(exc).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {path}: cannot read: {exc}") from None


def load_toml(path: str | Path) -> dict:
    """Read a job file: top-level keys are DreamConfig fields (dashes allowed); [dream] table also accepted;
    a [storage] table (fsspec options for URL locations) becomes ``storage_options``."""
    data = read_toml(path)
    storage = data.get("storage", data.get("storage_options", data.get("storage-options")))
    data = dict(data.get("dream", {}), **{k: v for k, v in data.items() if not isinstance(v, dict)})
    out = {k.replace("-", "_"): v for k, v in data.items()}
    if storage is not None:
        out["storage_options"] = storage
    return out


__all__ = ["PRESETS", "load_toml", "read_toml"]
