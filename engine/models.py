"""The model registry: every dreamable network and the facts that travel with it.

An entry carries its builder (architecture, random init), where its pretrained weights
come from (a vendored file or torchvision's weights API), its input normalization, its
default dream layer, the layers worth dreaming on, the smallest input it accepts and how
it is truncated. ``get_spec`` is the only lookup; unknown names list the valid ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One registry entry; built with keyword arguments only."""

    name: str
    builder: Callable[[], nn.Module]
    default_layer: str
    dream_layers: tuple[str, ...]
    min_size: int  # smallest H or W the deepest listed layer accepts
    truncation: str  # "slice" (nn.Sequential prefix of `features`) or "fx"
    tv_weights: str | None = None  # torchvision weights enum, e.g. "VGG16_Weights.IMAGENET1K_V1"
    vendored: str | None = None  # file name under engine/weights/
    vendored_sha256: str | None = None  # checked before the vendored file is loaded
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    description: str = ""
    ignore_keys: tuple[str, ...] = field(default=("aux1.", "aux2.", "AuxLogits."))

    @property
    def vendored_path(self) -> Path | None:
        return WEIGHTS_DIR / self.vendored if self.vendored else None


def _bvlc() -> nn.Module:
    from .bvlc import BVLCGoogLeNet

    return BVLCGoogLeNet()


def _tv(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kwargs)

    return build


_GOOGLENET_LAYERS = tuple(f"inception{b}" for b in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"))

_SPECS = (
    ModelSpec(
        name="bvlc_googlenet", builder=_bvlc, default_layer="inception4c", dream_layers=_GOOGLENET_LAYERS, min_size=32,
        truncation="fx", vendored="bvlc_googlenet.safetensors",
        vendored_sha256="8e1ff6c23aca4a8afde137d85f07aa3c6e37ae5678e931b83585448a04fe6e22",
        description="original BVLC GoogLeNet (Caffe zoo), the 2015 DeepDream network; weights vendored",
    ),
    ModelSpec(
        name="googlenet", builder=_tv("googlenet", aux_logits=False, transform_input=True, init_weights=False),
        default_layer="inception4c", dream_layers=_GOOGLENET_LAYERS, min_size=16, truncation="fx",
        tv_weights="GoogLeNet_Weights.IMAGENET1K_V1", description="torchvision GoogLeNet (3x3 in place of 5x5 branches)",
    ),
    ModelSpec(
        name="vgg16", builder=_tv("vgg16"), default_layer="features.30",
        dream_layers=("features.15", "features.22", "features.23", "features.29", "features.30"), min_size=32,
        truncation="slice", tv_weights="VGG16_Weights.IMAGENET1K_V1", description="VGG16, the seed article's model",
    ),
    ModelSpec(
        name="vgg19", builder=_tv("vgg19"), default_layer="features.36",
        dream_layers=("features.17", "features.26", "features.27", "features.35", "features.36"), min_size=32,
        truncation="slice", tv_weights="VGG19_Weights.IMAGENET1K_V1", description="VGG19",
    ),
    ModelSpec(
        name="inception_v3", builder=_tv("inception_v3", aux_logits=False, transform_input=True, init_weights=False),
        default_layer="Mixed_5d",
        dream_layers=("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                      "Mixed_7a", "Mixed_7b", "Mixed_7c"),
        min_size=75, truncation="fx", tv_weights="Inception_V3_Weights.IMAGENET1K_V1", description="Inception v3",
    ),
    ModelSpec(
        name="resnet50", builder=_tv("resnet50"), default_layer="layer3",
        dream_layers=("layer2", "layer3", "layer3.2", "layer3.5", "layer4"), min_size=32, truncation="fx",
        tv_weights="ResNet50_Weights.IMAGENET1K_V1", description="ResNet-50",
    ),
)

REGISTRY: dict[str, ModelSpec] = {s.name: s for s in _SPECS}


def list_models() -> list[str]:
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(REGISTRY)}") from None


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "REGISTRY", "ModelSpec", "get_spec", "list_models"]
