"""Factory: model name + layers + objective -> a ready ``DreamObjective`` and its facts."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .config import DreamConfig
from .models import ModelSpec, get_spec
from .objectives import build_objective, parse_layers
from .step import DreamObjective
from .truncate import truncate
from .weights import load_weights

log = logging.getLogger(__name__)


@dataclass
class DreamModel:
    module: DreamObjective  # x[N,3,H,W] -> objective[N]
    spec: ModelSpec
    weights_info: dict
    layers: list[tuple[str, float]]
    objective: str


def build_full_model(spec: ModelSpec, weights: str | None = None, random_weights: bool = False):
    """The whole classifier with its weights; random init is seeded so every process agrees."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = spec.builder()
    info = load_weights(spec, model, weights=weights, random_weights=random_weights)
    return model.eval(), info


def build_dream_model(
    model: str,
    layers: str | None = None,
    objective: str = "l2",
    channels: tuple[int, ...] = (),
    weights: str | None = None,
    random_weights: bool = False,
    guide: torch.Tensor | None = None,
) -> DreamModel:
    """Truncated, frozen, eval-mode dream objective for ``model`` at ``layers``.

    ``layers``: ``'inception4c'`` or ``'inception4c:1.0,inception4d:0.5'`` (default: the
    model's default layer). ``guide``: [1,3,h,w] in the model's normalized space.
    """
    spec = get_spec(model)
    parsed = parse_layers(layers or spec.default_layer)
    obj = build_objective(objective, parsed, tuple(channels))
    full, info = build_full_model(spec, weights, random_weights)
    feats = truncate(spec, full, [name for name, _ in parsed])
    module = DreamObjective(feats, obj, guide).eval()
    n_full = sum(p.numel() for p in full.parameters())
    n_kept = sum(p.numel() for p in module.parameters())
    log.info("%s truncated at %s: %d of %d parameters kept", spec.name, [n for n, _ in parsed], n_kept, n_full)
    return DreamModel(module, spec, info, parsed, objective)


def build_dream_model_for(cfg: DreamConfig, guide: torch.Tensor | None = None) -> DreamModel:
    """The dream model a job's config asks for (model, layers, objective, channels, weights)."""
    return build_dream_model(cfg.model, cfg.layer, cfg.objective, cfg.channels, cfg.weights, cfg.random_weights, guide)


__all__ = ["DreamModel", "build_dream_model", "build_dream_model_for", "build_full_model"]
