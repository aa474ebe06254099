"""A roofline model of one ascent step, from counts MEASURED on meta tensors of the real truncated model.

``measure_step`` runs the loop's real ``ascent_step`` (jitter roll, backend gradient, per-image
update) for one (N, H, W) on the ``meta`` device under a ``TorchDispatchMode`` and records every
aten op: FLOPs (``torch.utils.flop_counter``'s formulas), bytes read + written (input and output
tensors; views are free), one kernel per non-view op. Nothing is assumed about the network.

``StepModel`` turns the counts into device time on a datasheet device (``DEVICES``):

    device = sum over kernels of max(FLOPs_k / (peak * compute_eff), bytes_k / (bandwidth * mem_eff))
             + kernels * gap
    host   = kernels * launch (eager) or one graph launch (CUDA graphs)

Settings: ``eager`` (the measured kernels, launched one by one), ``graphs`` (the same kernels
replayed from a CUDA graph), ``fused`` (CUDA graphs + fusion, modelled on Inductor's split: point-wise
ops - casts, padding, roll, ReLU masks, the update - are folded into the neighbouring "anchor"
kernels - convolutions, matmuls, pooling, reductions, resampling - so only anchors move bytes and
launch; an ideal-fusion bound, not a measurement of Inductor or TensorRT).
Every figure this module produces is **simulated**.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry


@dataclass(frozen=True)
class Device:
    name: str
    bf16_tflops: float  # dense, datasheet
    tf32_tflops: float  # dense, datasheet
    bandwidth_gbs: float  # datasheet
    source: str


# Vendor datasheet peaks (dense, no sparsity).
DEVICES = {
    "h100": Device("H100 SXM5 80GB (simulated)", 989.0, 494.0, 3350.0, "NVIDIA H100 datasheet (SXM5)"),
    "h200": Device("H200 SXM 141GB (simulated)", 989.0, 494.0, 4800.0, "NVIDIA H200 datasheet (SXM)"),
    "a100": Device("A100 SXM4 80GB (simulated)", 312.0, 156.0, 2039.0, "NVIDIA A100 datasheet (SXM4 80GB)"),
    "l4": Device("L4 24GB (simulated)", 121.0, 60.0, 300.0, "NVIDIA L4 datasheet"),
}
SETTINGS = ("eager", "graphs", "fused")

# Model parameters (estimates, declared in every row): achievable fractions of the peaks and per-kernel costs.
COMPUTE_EFF = 0.6  # convolutions on tensor cores
MEM_EFF = 0.8  # streaming kernels vs datasheet bandwidth
GAP_S = {"eager": 2.0e-6, "graphs": 1.0e-6, "fused": 1.0e-6}  # device idle between dependent kernels
LAUNCH_S = 2.5e-6  # host: driver launch per kernel in eager (the dispatcher's own cost is run for real)
GRAPH_LAUNCH_S = 15e-6  # host: one cudaGraphLaunch per step

_VIEWS = {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "unsqueeze", "squeeze",
          "slice", "select", "alias", "detach", "as_strided", "unbind", "split", "split_with_sizes", "chunk",
          "view_as", "lift_fresh", "_reshape_alias", "empty", "empty_like", "empty_strided", "new_empty",
          "new_empty_strided", "unfold", "expand_as", "narrow"}
# Inductor's split: convolutions/matmuls (extern kernels), pooling, reductions and resampling keep a kernel;
# point-wise ops - casts, padding, roll (index arithmetic), ReLU masks, the update - fuse into them.
_ANCHOR_PREFIXES = ("convolution", "mm", "addmm", "bmm", "upsample", "_upsample")
_ANCHOR_PARTS = ("pool",)
_ANCHOR_NAMES = {"sum", "mean", "amax", "max", "linalg_vector_norm", "norm", "cat"}


def is_anchor(op: str) -> bool:
    """Kernels that keep their own launch and memory traffic when element-wise ops are fused around them."""
    return op in _ANCHOR_NAMES or op.startswith(_ANCHOR_PREFIXES) or any(p in op for p in _ANCHOR_PARTS)


@dataclass
class Kernel:
    op: str
    flops: int
    bytes: int


@dataclass
class StepCounts:
    """What one ascent step dispatched: one entry per (non-view) kernel."""

    kernels: list[Kernel] = field(default_factory=list)

    def totals(self, setting: str = "eager") -> dict:
        ks = self.for_setting(setting)
        return {"kernels": len(ks), "flops": sum(k.flops for k in ks), "bytes": sum(k.bytes for k in ks)}

    def for_setting(self, setting: str) -> list[Kernel]:
        if setting not in SETTINGS:
            raise ValueError(f"unknown setting {setting!r}; valid: {', '.join(SETTINGS)}")
        if setting != "fused":
            return self.kernels
        return [k for k in self.kernels if k.flops or is_anchor(k.op)]


def _nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            key = (id(t.untyped_storage()) if t.device.type != "meta" else id(t), t.storage_offset())
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    return total


class _Recorder(TorchDispatchMode):
    def __init__(self, counts: StepCounts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._overloadpacket.__name__
        if name in _VIEWS or name.endswith("_view"):
            return out
        flops = 0
        if func._overloadpacket in flop_registry:
            flops = int(flop_registry[func._overloadpacket](*args, **kwargs, out_val=out))
        ins, _ = tree_flatten((args, kwargs))
        outs, _ = tree_flatten(out)
        inplace = name.endswith("_") or "out" in kwargs
        moved = _nbytes(ins) + (0 if inplace else _nbytes(outs))
        self.counts.kernels.append(Kernel(name, flops, moved))
        return out


def measure_step(backend, cfg, spec, n: int, h: int, w: int) -> StepCounts:
    """Counts of one real ``ascent_step`` at (n, h, w) with ``backend`` built on the meta device."""
    from dreamfleet.engine.jitter import image_rng
    from dreamfleet.engine.loop import ascent_step
    from dreamfleet.engine.space import ImageSpace

    meta = torch.device("meta")
    space = ImageSpace.create(spec, cfg, meta, torch.float32)
    z = torch.empty(n, 3, h, w, device=meta)
    rngs = [image_rng(cfg.seed, str(i)) for i in range(n)]
    counts = StepCounts()
    with _Recorder(counts):
        ascent_step(backend, z, rngs, cfg, space)
    return counts


@dataclass
class StepModel:
    """Simulated seconds of one step, per (N, H, W), from measured counts on a datasheet device."""

    device: Device
    precision: str
    setting: str
    measure: object  # (n, h, w) -> StepCounts
    _cache: dict = field(default_factory=dict)

    def breakdown(self, n: int, h: int, w: int) -> dict:
        key = (n, h, w)
        if key not in self._cache:
            ks = self.measure(n, h, w).for_setting(self.setting)
            peak = (self.device.bf16_tflops if self.precision in ("bf16", "fp16") else self.device.tf32_tflops) * 1e12
            bw = self.device.bandwidth_gbs * 1e9
            compute = memory = 0.0
            for k in ks:
                tc, tm = k.flops / (peak * COMPUTE_EFF), k.bytes / (bw * MEM_EFF)
                compute, memory = compute + (tc if tc >= tm else 0.0), memory + (tm if tm > tc else 0.0)
            gaps = len(ks) * GAP_S[self.setting]
            host = len(ks) * LAUNCH_S if self.setting == "eager" else GRAPH_LAUNCH_S
            self._cache[key] = {"kernels": len(ks), "flops": sum(k.flops for k in ks),
                                "bytes": sum(k.bytes for k in ks), "compute_bound_s": compute,
                                "memory_bound_s": memory, "gaps_s": gaps, "device_s": compute + memory + gaps,
                                "host_launch_s": host}
        return self._cache[key]

    def step_seconds(self, n: int, h: int, w: int) -> float:
        return self.breakdown(n, h, w)["device_s"]

    def host_seconds(self, n: int, h: int, w: int) -> float:
        return self.breakdown(n, h, w)["host_launch_s"]
