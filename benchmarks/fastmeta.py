"""Simulation-only: C++-speed shape kernels on the ``meta`` device for the ops of the loop's per-step work.

The simulated job runs the octave loop on ``meta`` tensors so the host path is real but no
arithmetic happens. torch's meta kernels for several of these ops are Python references
(``torch._refs``): measured here, one ``roll`` of a [32,3,512,512] meta tensor costs ~5 ms and a
broadcasting ``mul`` ~0.2 ms, 20-500x what issuing the same op costs on CUDA. Inside
``fast_meta_kernels()`` those ops get direct shape-only Meta kernels, so the simulated host cost
of the loop is dispatch, not reference-implementation overhead. Shapes and dtypes are the ops'
real ones (broadcasting, type promotion, reductions); values do not exist on meta anyway.
The pipelined loop's update (``addcdiv``, ``clamp`` with tensor bounds), its jitter tables
(``remainder``) and the octave resampling (``upsample_*``) are covered too: their references cost
0.3-10 ms each on meta (measured), which made the simulated host, not the device, the bottleneck.
"""
from __future__ import annotations

import contextlib

import torch

_BINARY = ("mul.Tensor", "div.Tensor", "add.Tensor", "sub.Tensor", "minimum", "maximum")
_UNARY = ("abs", "neg", "clamp_min", "roll", "clamp", "remainder.Scalar")
_TERNARY = ("clamp.Tensor", "addcdiv")
_RESAMPLE = ("upsample_bilinear2d", "upsample_nearest2d")  # their .vec overloads decompose into these


def _binary(a, b, *rest, **kw):
    ta, tb = (a if isinstance(a, torch.Tensor) else None), (b if isinstance(b, torch.Tensor) else None)
    shape = torch.broadcast_shapes(*(t.shape for t in (ta, tb) if t is not None))
    dtype = torch.result_type(a, b)
    return torch.empty(shape, dtype=dtype, device="meta")


def _unary(x, *rest, **kw):
    return torch.empty_like(x)


def _ternary(x, a=None, b=None, *rest, **kw):
    """clamp.Tensor(x, min, max), addcdiv(x, t1, t2): broadcast over every tensor operand."""
    ts = [t for t in (x, a, b) if isinstance(t, torch.Tensor)]
    dtype = x.dtype
    for t in ts[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.empty(torch.broadcast_shapes(*(t.shape for t in ts)), dtype=dtype, device="meta")


def _resampled(x, output_size, *rest, **kw):
    """upsample_*2d.default: x[N,C,h,w] -> [N,C,H,W] (``output_size`` is always given in this overload)."""
    return torch.empty([*x.shape[:-2], *output_size], dtype=x.dtype, device="meta")


def _mean_dim(x, dim, keepdim=False, dtype=None):
    dims = {d % x.dim() for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
    shape = [1 if i in dims else s for i, s in enumerate(x.shape) if keepdim or i not in dims]
    return torch.empty(shape, dtype=dtype or x.dtype, device="meta")


def _stack(tensors, dim=0):
    t = tensors[0]
    dim = dim % (t.dim() + 1)
    return torch.empty([*t.shape[:dim], len(tensors), *t.shape[dim:]], dtype=t.dtype, device="meta")


@contextlib.contextmanager
def fast_meta_kernels():
    """Register the shape-only Meta kernels for the duration of the block."""
    lib = torch.library.Library("aten", "IMPL")  # noqa: TOR901 (scoped: destroyed on exit)
    try:
        for name in _BINARY:
            lib.impl(name, _binary, "Meta")
        for name in _UNARY:
            lib.impl(name, _unary, "Meta")
        for name in _TERNARY:
            lib.impl(name, _ternary, "Meta")
        for name in _RESAMPLE:
            lib.impl(name, _resampled, "Meta")
        lib.impl("mean.dim", _mean_dim, "Meta")
        lib.impl("stack", _stack, "Meta")
        yield
    finally:
        lib._destroy()
