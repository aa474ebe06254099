"""Simulation-only: C++-speed shape kernels on the ``meta`` device for the ops of the loop's per-step work.

The simulated job runs the octave loop on ``meta`` tensors so the host path is real but no
arithmetic happens. torch's meta kernels for several of these ops are Python references
(``torch._refs``): measured here, one ``roll`` of a [32,3,512,512] meta tensor costs ~5 ms and a
broadcasting ``mul`` ~0.2 ms, 20-500x what issuing the same op costs on CUDA. Inside
``fast_meta_kernels()`` those ops get direct shape-only Meta kernels, so the simulated host cost
of the loop is dispatch, not reference-implementation overhead. Shapes and dtypes are the ops'
real ones (broadcasting, type promotion, reductions); values do not exist on meta anyway.
"""
from __future__ import annotations

import contextlib

import torch

_BINARY = ("mul.Tensor", "div.Tensor", "add.Tensor", "sub.Tensor", "minimum", "maximum")
_UNARY = ("abs", "neg", "clamp_min", "roll")


def _binary(a, b, *rest, **kw):
    ta, tb = (a if isinstance(a, torch.Tensor) else None), (b if isinstance(b, torch.Tensor) else None)
    shape = torch.broadcast_shapes(*(t.shape for t in (ta, tb) if t is not None))
    dtype = torch.result_type(a, b)
    return torch.empty(shape, dtype=dtype, device="meta")


def _unary(x, *rest, **kw):
    return torch.empty_like(x)


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
        lib.impl("mean.dim", _mean_dim, "Meta")
        lib.impl("stack", _stack, "Meta")
        yield
    finally:
        lib._destroy()
