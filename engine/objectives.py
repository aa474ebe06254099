"""What is optimized: composable per-image objectives over a dict of layer activations.

Every objective maps ``feats: dict[layer, Tensor[N,C,h,w]]`` to ``Tensor[N]``, one value
per image, computed from that image's activations only, so a batch's gradient is the
stack of the one-image gradients.

Kinds (``--objective``):
- ``l2``     mean of squared activations (Google's 2015 L2 objective; its gradient
             direction equals the activations themselves)
- ``norm``   L2 norm of the activations (the seed article's ``out.norm()``)
- ``channel`` mean activation of chosen channels (``--channels 3,17``)
- ``guide``  Google's guided dream: each position is pulled toward the guide feature
             with the largest dot product
- ``guide-distance`` minus the mean squared distance to the guide's features at the
             same spatial size (the seed article's variant)

Several layers with weights (``inception4c:1.0,inception4d:0.5``) sum weighted terms.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .vocabulary import GUIDED_KINDS, OBJECTIVE_KINDS


class LayerObjective(nn.Module):
    """Base for objectives that read one layer."""

    kind = "abstract"

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}"


class MeanSquare(LayerObjective):
    kind = "l2"

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        a = feats[self.layer].flatten(1)  # [N, C*h*w]
        return a.pow(2).mean(dim=1)


class Norm(LayerObjective):
    kind = "norm"

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        a = feats[self.layer].flatten(1)  # [N, C*h*w]
        return a.pow(2).sum(dim=1).sqrt()


class Channel(LayerObjective):
    kind = "channel"

    def __init__(self, layer: str, channels: tuple[int, ...]) -> None:
        super().__init__(layer)
        if not channels:
            raise ValueError("objective 'channel' needs at least one channel index (--channels 3,17)")
        self.channels = tuple(int(c) for c in channels)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        a = feats[self.layer]  # [N, C, h, w]
        n_ch = a.shape[1]
        bad = [c for c in self.channels if not 0 <= c < n_ch]
        if bad:
            raise ValueError(f"channel(s) {bad} out of range for layer {self.layer!r} with {n_ch} channels (valid: 0..{n_ch - 1})")
        picked = a[:, list(self.channels)]  # [N, k, h, w]
        return picked.flatten(1).mean(dim=1)

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, channels={self.channels}"


class GuideDot(LayerObjective):
    """Google's guided objective. ``guide`` buffer: guide features [C, M] (M guide positions)."""

    kind = "guide"

    def __init__(self, layer: str) -> None:
        super().__init__(layer)
        self.register_buffer("guide", torch.zeros(0), persistent=False)

    def set_guide(self, guide_feats: torch.Tensor) -> None:
        self.guide = guide_feats[0].flatten(1).detach()  # [1,C,h,w] -> [C, M]

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        a = feats[self.layer].flatten(2)  # [N, C, P]
        g = self.guide.to(a.dtype)  # [C, M]
        scores = torch.einsum("ncp,cm->npm", a, g)  # [N, P, M]
        # max over guide positions: its gradient w.r.t. a is the best-matching guide vector
        return scores.max(dim=2).values.sum(dim=1)  # [N]


class GuideDistance(LayerObjective):
    """Minus mean squared distance to the guide's features (guide resized to the input's size)."""

    kind = "guide-distance"

    def __init__(self, layer: str) -> None:
        super().__init__(layer)
        self.register_buffer("guide", torch.zeros(0), persistent=False)

    def set_guide(self, guide_feats: torch.Tensor) -> None:
        self.guide = guide_feats.detach()  # [1, C, h, w]

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        a = feats[self.layer]  # [N, C, h, w]
        diff = a - self.guide.to(a.dtype)  # broadcast over N
        return -diff.flatten(1).pow(2).mean(dim=1)


class Weighted(nn.Module):
    """Sum of weighted objectives: sum_i w_i * term_i(feats)."""

    def __init__(self, terms: list[tuple[float, nn.Module]]) -> None:
        super().__init__()
        self.weights = [float(w) for w, _ in terms]
        self.terms = nn.ModuleList([t for _, t in terms])

    @property
    def layers(self) -> list[str]:
        return [t.layer for t in self.terms]

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for w, term in zip(self.weights, self.terms):
            v = w * term(feats)  # [N]
            total = v if total is None else total + v
        return total


def parse_layers(spec: str) -> list[tuple[str, float]]:
    """``'inception4c:1.0,inception4d:0.5'`` -> [('inception4c', 1.0), ('inception4d', 0.5)]."""
    out: list[tuple[str, float]] = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"bad layer weight in {part!r}: expected NAME or NAME:WEIGHT, e.g. inception4c:1.0") from None
        out.append((name.strip(), w))
    if not out:
        raise ValueError("no layer given: expected NAME or NAME:WEIGHT[,NAME:WEIGHT...]")
    return out


# objective kind (--objective) -> the term it puts on each layer; the one registry of kinds
TERMS: dict[str, Callable[[str, tuple[int, ...]], nn.Module]] = {
    "l2": lambda layer, channels: MeanSquare(layer),
    "norm": lambda layer, channels: Norm(layer),
    "channel": lambda layer, channels: Channel(layer, channels),
    "guide": lambda layer, channels: GuideDot(layer),
    "guide-distance": lambda layer, channels: GuideDistance(layer),
}
assert tuple(TERMS) == OBJECTIVE_KINDS


def build_objective(kind: str, layers: list[tuple[str, float]], channels: tuple[int, ...] = ()) -> Weighted:
    """Make the composite objective for ``--objective KIND`` over weighted layers."""
    if kind not in TERMS:
        raise ValueError(f"unknown objective {kind!r}; valid: {', '.join(OBJECTIVE_KINDS)}")
    if kind in GUIDED_KINDS and len(layers) != 1:
        raise ValueError(f"objective {kind!r} takes exactly one layer, got {[n for n, _ in layers]}")
    return Weighted([(w, TERMS[kind](name, tuple(channels))) for name, w in layers])


__all__ = ["GUIDED_KINDS", "OBJECTIVE_KINDS", "TERMS", "Channel", "GuideDistance", "GuideDot", "LayerObjective",
           "MeanSquare", "Norm", "Weighted", "build_objective", "parse_layers"]
