"""Truncation at the target layer: keep only what the deepest requested layer needs.

VGG-style models are sliced (``features[:k+1]``); every other model goes through
torchvision's FX ``create_feature_extractor``, which drops the graph after the requested
nodes and the submodules nothing uses any more. The result maps ``x[N,3,H,W]`` to
``{layer: activation}``; it is in eval mode with frozen parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from .models import ModelSpec

_HEAD_NAMES = ("avgpool", "dropout", "fc", "classifier", "aux1", "aux2", "AuxLogits")


def valid_layers(spec: ModelSpec, model: nn.Module) -> list[str]:
    """Every layer name that can be dreamed on: top-level blocks and the children of Sequentials."""
    names: list[str] = []
    for name, child in model.named_children():
        if name in _HEAD_NAMES:
            continue
        if isinstance(child, nn.Sequential):
            if spec.truncation != "slice":
                names.append(name)
            names.extend(f"{name}.{sub}" for sub, _ in child.named_children())
        else:
            names.append(name)
    return names


def check_layers(spec: ModelSpec, model: nn.Module, layers: list[str]) -> None:
    valid = valid_layers(spec, model)
    bad = [layer for layer in layers if layer not in valid]
    if bad:
        raise ValueError(
            f"unknown layer(s) {bad} for model {spec.name!r}; valid: {', '.join(valid)} "
            f"(recommended: {', '.join(spec.dream_layers)})"
        )


class SlicedFeatures(nn.Module):
    """A prefix of an ``nn.Sequential`` that returns the requested intermediate outputs."""

    def __init__(self, prefix: str, body: nn.Sequential, wanted: dict[int, str]) -> None:
        super().__init__()
        self.prefix = prefix
        self.body = body
        self.wanted = wanted  # index in body -> layer name

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in self.wanted:
                out[self.wanted[i]] = x
        return out


def truncate(spec: ModelSpec, model: nn.Module, layers: list[str]) -> nn.Module:
    """The dream module: ``x[N,3,H,W] -> {layer: Tensor[N,C,h,w]}``, eval mode, frozen."""
    check_layers(spec, model, layers)
    model = model.eval()
    if spec.truncation == "slice":
        prefix = layers[0].split(".")[0]
        if any(layer.split(".")[0] != prefix for layer in layers):
            raise ValueError(f"sliced models take layers of one block; got {layers}")
        seq = getattr(model, prefix)
        idx = {int(layer.split(".")[1]): layer for layer in layers}
        body = nn.Sequential(*list(seq.children())[: max(idx) + 1])
        feats: nn.Module = SlicedFeatures(prefix, body, idx)
    elif spec.truncation == "fx":
        from torchvision.models.feature_extraction import create_feature_extractor

        feats = create_feature_extractor(model, return_nodes={layer: layer for layer in layers})
    else:
        raise ValueError(f"unknown truncation {spec.truncation!r}; valid: slice, fx")
    feats.eval()
    for p in feats.parameters():
        p.requires_grad_(False)
    return feats


def layer_shapes(spec: ModelSpec, model: nn.Module, size: int = 224) -> list[tuple[str, tuple[int, ...]]]:
    """(layer, output shape for one ``size`` x ``size`` image) for every valid layer."""
    names = valid_layers(spec, model)
    out: list[tuple[str, tuple[int, ...]]] = []
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        if spec.truncation == "slice":
            prefix = names[0].split(".")[0]
            feats = truncate(spec, model, [n for n in names if n.startswith(prefix + ".")])(x)
        else:
            feats = truncate(spec, model, names)(x)
    for n in names:
        if n in feats:
            out.append((n, tuple(feats[n].shape[1:])))
    return out


__all__ = ["SlicedFeatures", "check_layers", "layer_shapes", "truncate", "valid_layers"]
