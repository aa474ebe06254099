"""Compute precision: ``--precision auto`` resolution and a feature module cast once to a half dtype.

Under ``torch.autocast`` every convolution re-casts its frozen weight and bias at every forward
(autocast caches casts only for leaves that require grad, and dream weights are frozen), so a
half-precision step pays three casts per conv. :func:`cast_features` instead casts the truncated
network's weights once, up front (eval-mode BatchNorms folded into their convolutions first),
and runs it natively in the half dtype, except for the layers
that are numerically sensitive (``FP32_LAYERS``: LocalResponseNorm computes ``k + alpha*avg(x^2)``
near 1, where bf16's 8 mantissa bits erase the normalization and fp16 overflows at ``x^2``;
norms keep fp32 statistics), which run in fp32 islands. The objective reduction and the ascent
update stay in fp32 (the wrapper hands fp32 activations to the objective).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
FP32_LAYERS = (nn.LocalResponseNorm, nn.LayerNorm, nn.GroupNorm)
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo flags of native bf16 dot products


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when this CPU computes bf16 dot products natively (AVX512-BF16 or AMX-BF16).

    ``cpuinfo``: the text of ``/proc/cpuinfo`` (read when None); only its first processor's flags count.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    words = set(cpuinfo.split("\n\n")[0].split())
    return bool(words & NATIVE_BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where the device has native bf16 (CUDA sm80+, CPU AVX512-BF16/AMX), else 'fp32'.

    An explicit 'bf16' on a CPU without native bf16 is kept (the user asked for it) with a warning:
    PyTorch emulates it there, measured 44x slower than fp32 on a Zen 3 (docs/peer-comparison.md).
    """
    device = torch.device(device)
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("precision bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16 in /proc/cpuinfo): "
                    "PyTorch emulates it (44x slower than fp32 on a Zen 3); use --precision fp32 or auto")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        native = major >= 8
    elif device.type == "cpu":
        native = cpu_has_native_bf16()
    else:
        native = False
    resolved = "bf16" if native else "fp32"
    log.info("precision auto -> %s on %s%s", resolved, device,
             "" if native or device.type != "cpu" else " (this CPU has no native bf16: avx512_bf16 or amx_bf16)")
    return resolved


class Fp32Island(nn.Module):
    """Runs ``inner`` in fp32 inside a half-precision network: x (half) -> fp32 -> inner -> half."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float()).to(x.dtype)


def fold_batchnorms(features: nn.Module) -> int:
    """Fold eval-mode ``bn`` into its sibling ``conv`` (the Conv-BN-ReLU block of GoogLeNet/Inception).

    w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta; the BN becomes an
    Identity: two kernels (forward and backward) and their traffic less per block. Returns the count.
    """
    folded = 0
    for mod in list(features.modules()):
        conv, bn = getattr(mod, "conv", None), getattr(mod, "bn", None)
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)) or bn.training:
            continue
        if bn.running_mean is None or bn.running_var is None:
            continue
        with torch.no_grad():
            gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
            beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_var)
            scale = gamma / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
            conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + beta, requires_grad=False)
        mod.bn = nn.Identity()
        folded += 1
    return folded


class CastFeatures(nn.Module):
    """The truncated network with weights cast once to ``dtype``; returns fp32 activations.

    x[N,3,H,W] (any float dtype) -> {layer: act[N,C,h,w] float32}.
    """

    def __init__(self, features: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        # the caller's module stays untouched; deepcopy of an FX feature extractor comes back in train mode
        self.features = copy.deepcopy(features).train(features.training)
        fold_batchnorms(self.features)  # in fp32, before the cast
        self.features = self.features.to(dtype)
        for name, mod in list(self.features.named_modules()):
            if name and isinstance(mod, FP32_LAYERS):
                parent_name, _, child = name.rpartition(".")
                parent = self.features.get_submodule(parent_name) if parent_name else self.features
                setattr(parent, child, Fp32Island(mod))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.features(x.to(self.dtype))
        return {k: v.float() for k, v in out.items()}


def cast_features(module: nn.Module, precision: str) -> nn.Module:
    """A shallow copy of a ``DreamObjective`` whose ``features`` run natively in ``precision``.

    fp32/fp64 return ``module`` unchanged. The objective (reduction) stays fp32.
    """
    if precision not in HALF:
        return module
    twin = copy.copy(module)
    twin._modules = dict(module._modules)  # the copy gets its own child table
    twin._buffers = dict(module._buffers)
    twin.features = CastFeatures(module.features, HALF[precision])
    twin.objective = copy.deepcopy(module.objective)  # guide features set on the twin stay the twin's
    twin._guide_shape = None
    return twin
