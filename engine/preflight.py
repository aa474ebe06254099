"""Checks of the files and indices a job names, made before any output state is written.

A bad file given as an option (``--weights``, ``--guide``) or a ``--channels`` index outside
the layer must stop the job up front with one line that names it (exit 2 on the command
line), not as a traceback after the output folder was locked and stamped. Input *images*
are not checked here: an unreadable one becomes a failure record and the rest proceeds.
"""
from __future__ import annotations

import glob
import zipfile
from pathlib import Path

import torch

from .config import DreamConfig
from .imageio import ImageLoadError, load_image
from .models import get_spec
from .objectives import GUIDED_KINDS, parse_layers
from .storage import is_url


class BadOptionFile(ValueError):
    """A file or value given as an option is unusable; the message names it and says why (one line)."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def existing_file(option: str, value: str | Path) -> Path:
    """The path given to ``option`` (e.g. ``--guide``), or BadOptionFile naming it when there is no such file."""
    path = Path(value)
    if not path.is_file():
        raise BadOptionFile(f"{option} {path}: no such file")
    return path


def names_something(raw: str) -> bool:
    """A local input names a file or folder, or is a glob matching at least one path."""
    path = raw[len("file://"):] if raw.lower().startswith("file://") else raw
    return Path(path).exists() or (glob.has_magic(path) and any(True for _ in glob.iglob(path, recursive=True)))


def check_inputs_exist(inputs: list[str]) -> None:
    """When *none* of the inputs names anything, a usage error listing them (exit 2, nothing written).

    One missing input among existing ones stays a per-input failure record of the job (``inputs.discover``);
    object-store URLs are checked by the job itself (that needs the network), so any URL skips this check.
    """
    if not inputs or any(is_url(raw) for raw in inputs):
        return
    missing = [raw for raw in inputs if not names_something(raw)]
    if len(missing) == len(inputs):
        raise BadOptionFile(f"no such file or folder: {', '.join(missing)}")


def check_weights_file(path: str | Path) -> None:
    """``--weights``: exists, and its header / archive reads as a state dict (the tensors are not loaded)."""
    path = Path(path)
    valid = (".safetensors", ".pth", ".pt", ".bin")
    if path.suffix not in valid:
        raise BadOptionFile(f"--weights {path}: unsupported suffix {path.suffix!r}; valid: {', '.join(valid)}")
    existing_file("--weights", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                fh.keys()
        else:  # zip archives are memory-mapped (nothing read); legacy pickles are loaded
            torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # garbage raises many types (SafetensorError, UnpicklingError, RuntimeError...)
        raise BadOptionFile(f"--weights {path}: not a readable {path.suffix} weights file ({first_line(exc)})") from None


def check_guide(cfg: DreamConfig) -> None:
    """``--guide``: given when the objective needs it, and a decodable image."""
    if cfg.objective in GUIDED_KINDS and not cfg.guide:
        raise BadOptionFile(f"objective {cfg.objective!r} needs a guide image: --guide PATH")
    if not cfg.guide:
        return
    path = existing_file("--guide", cfg.guide)
    try:
        load_image(path, cfg.max_pixels)
    except ImageLoadError as exc:
        raise BadOptionFile(f"--guide {path}: {exc}") from None


def layer_channels(model: str, layers: list[str]) -> dict[str, int]:
    """Channel width of each layer, from a weightless (meta-device) build: nothing is computed."""
    from .truncate import truncate

    spec = get_spec(model)
    with torch.device("meta"):
        full = spec.builder()
    side = max(spec.min_size, 224)
    feats = truncate(spec, full, layers)(torch.zeros(1, 3, side, side, device="meta"))
    return {name: int(t.shape[1]) for name, t in feats.items()}


def check_channels(cfg: DreamConfig) -> None:
    """``--channels``: every index inside every objective layer's width (objective ``channel``)."""
    if cfg.objective != "channel" or not cfg.channels:
        return
    widths = layer_channels(cfg.model, [name for name, _ in parse_layers(cfg.layer or get_spec(cfg.model).default_layer)])
    for layer, n_ch in widths.items():
        bad = [c for c in cfg.channels if not 0 <= c < n_ch]
        if bad:
            raise BadOptionFile(f"--channels {','.join(map(str, bad))}: out of range for layer {layer!r} of "
                                f"{cfg.model} with {n_ch} channels (valid: 0..{n_ch - 1})")


def check_job_options(cfg: DreamConfig) -> None:
    """Every engine-level check of the files and indices ``cfg`` names (backends add their own)."""
    if cfg.weights and not cfg.random_weights:
        check_weights_file(cfg.weights)
    check_guide(cfg)
    check_channels(cfg)


__all__ = ["BadOptionFile", "check_channels", "check_guide", "check_inputs_exist", "check_job_options", "check_weights_file",
           "existing_file", "layer_channels", "names_something"]
