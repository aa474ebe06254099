"""Where a model's weights come from: vendored file, torchvision's weights API, a local file, or none.

Order: ``--random-weights`` (smoke tests; recorded as such), ``--weights PATH`` (a
``.safetensors`` or ``.pth``, loaded with ``weights_only=True``), the entry's vendored file,
then torchvision's weights API, which serves from its cache (``$TORCH_HOME/hub/checkpoints``)
and downloads only when the file is missing. A failure offline raises
:class:`WeightsUnavailable` naming the three ways to fix it.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from .atomic import file_digest
from .models import ModelSpec

log = logging.getLogger(__name__)


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be had; the message says how to fix it."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or ``.pth``/``.pt`` (weights_only)."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise ValueError(f"unsupported weights file {path.name!r}; valid suffixes: .safetensors, .pth, .pt, .bin")
    if not path.is_file():
        raise WeightsUnavailable(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    return sd


def _torchvision_state_dict(spec: ModelSpec) -> tuple[dict[str, torch.Tensor], str]:
    import torchvision

    weights = torchvision.models.get_weight(spec.tv_weights)
    url = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    try:
        sd = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # network errors come in many types
        raise WeightsUnavailable(
            f"could not load pretrained weights for {spec.name!r} ({spec.tv_weights}): {type(exc).__name__}: {exc}\n"
            f"Fix it in one of three ways:\n"
            f"  1. put the file in torchvision's cache: download {url}\n"
            f"     to {cached} (the cache honours TORCH_HOME) on a machine with internet;\n"
            f"  2. pass a local file: --weights PATH (.safetensors or .pth state dict);\n"
            f"  3. dream with untrained weights for a smoke test: --random-weights."
        ) from None
    return sd, str(cached)


def load_weights(spec: ModelSpec, model: nn.Module, weights: str | None = None, random_weights: bool = False) -> dict:
    """Fill ``model`` with the chosen weights; returns a record for reports and metadata."""
    if random_weights:
        return {"source": "random", "note": "untrained random init (seed 0): smoke test only"}
    if weights:
        sd, origin, source = read_state_dict(weights), str(weights), "file"
    elif spec.vendored:
        _check_sha256(spec.vendored_path, spec.vendored_sha256)
        sd, origin, source = read_state_dict(spec.vendored_path), spec.vendored, "vendored"
    elif spec.tv_weights:
        sd, origin = _torchvision_state_dict(spec)
        source = "torchvision"
    else:
        raise WeightsUnavailable(f"model {spec.name!r} has no weights source; use --weights PATH or --random-weights")
    sd = {k: v for k, v in sd.items() if not k.startswith(spec.ignore_keys)}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise WeightsUnavailable(
            f"weights {origin!r} do not fit {spec.name!r}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    return {"source": source, "path": origin}


def _check_sha256(path: Path, expected: str | None) -> None:
    """Refuse a vendored file that is not the one the registry names (a Git LFS pointer, a bad copy)."""
    if expected is None or not path.is_file():
        return
    digest = file_digest(path, "sha256")
    if digest != expected:
        raise WeightsUnavailable(f"{path} has sha256 {digest}, expected {expected}: the vendored weights "
                                 "file is damaged; restore it from git (git checkout -- engine/weights)")


def state_hash(module: nn.Module) -> str:
    """sha256 over the module's parameters and buffers (names, shapes, bytes): identifies weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


__all__ = ["WeightsUnavailable", "load_weights", "read_state_dict", "state_hash"]
