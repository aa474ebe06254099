"""Decompositions that turn the backward ops of the dream gradient into TensorRT-friendly forward ops.

Tracing ``torch.func.grad`` of the dream objective yields autograd's backward kernels
(``convolution_backward``, ``max_pool2d_with_indices_backward``, ...), which have no ONNX
equivalent. This module owns the table that :func:`export.graph.trace_gradient` hands to
``make_fx``; every entry rewrites one backward op with ops that ONNX and TensorRT 10 run:

- convolution backward (input gradient only) -> ConvTranspose (+ crop to the input size),
- average-pool backward (2d, 3d) -> depthwise ConvTranspose with a constant 1/k kernel,
- max-pool backward -> forward ops that send each window's gradient to the *first*
  maximum in raster order (PyTorch's CPU and CUDA rule; GoogLeNet really has ties), then
  a one-hot ConvTranspose places the k*k masked gradients back. Neither MaxPool's
  ``Indices`` output nor ScatterElements is used, and the mask compares a value with a
  maximum computed from the very same tensor, so it holds in any (single) precision,
- select/slice backward -> Pad, ReLU/BatchNorm backward -> PyTorch's own forward-op rules.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def _tuple(v, n: int) -> tuple[int, ...]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(int(i) for i in (v * n if len(v) == 1 else v))


def _crop(t: torch.Tensor, sizes, start: int = 0) -> torch.Tensor:
    """Crop the trailing spatial dims of t[N,C,*S'] to ``sizes`` starting at ``start``."""
    nd = len(sizes)
    for i, size in enumerate(sizes):
        dim = t.dim() - nd + i
        t = torch.ops.aten.slice.Tensor(t, dim, start, start + size)
    return t


def _transpose_conv(grad: torch.Tensor, weight: torch.Tensor, in_sizes, stride, padding, dilation,
                    groups: int) -> torch.Tensor:
    """Input gradient of a convolution: grad[N,Co,*So] -> [N,Ci,*in_sizes] via one ConvTranspose.

    ``output_padding = stride - 1`` makes the result at least ``in_sizes`` long whatever the
    (dynamic) input size was; the extra tail belongs to inputs that do not exist and is cropped.
    """
    nd = len(in_sizes)
    out_pad = [s - 1 if s > 1 else 0 for s in stride]
    out = torch.ops.aten.convolution.default(grad, weight, None, list(stride), list(padding), list(dilation), True,
                                             out_pad, groups)
    if any(s > 1 for s in stride):
        out = _crop(out, in_sizes)
    assert out.dim() == nd + 2
    return out


def convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask):
    """aten.convolution_backward for the input gradient of a frozen, non-transposed convolution."""
    if transposed or output_mask[1] or output_mask[2]:
        return NotImplemented  # weight gradients / transposed convs never occur in a dream gradient
    nd = input.dim() - 2
    grad_in = None
    if output_mask[0]:
        grad_in = _transpose_conv(grad_output, weight, input.shape[2:], _tuple(stride, nd), _tuple(padding, nd),
                                  _tuple(dilation, nd), groups)  # [N, Ci, *S]
    return grad_in, None, None


def _avg_pool_backward(grad_output, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                       divisor_override, nd: int):
    """grad[N,C,*So] -> [N,C,*S]: a depthwise ConvTranspose whose kernel is 1/divisor everywhere."""
    k = _tuple(kernel_size, nd)
    s = _tuple(stride, nd) if stride else k
    p = _tuple(padding, nd)
    if ceil_mode:
        raise NotImplementedError("average-pool backward with ceil_mode=True is not supported by the ONNX export")
    c = x.shape[1]
    numel = 1
    for v in k:
        numel *= v
    if divisor_override:
        g = grad_output / float(divisor_override)
    elif count_include_pad or not any(p):
        g = grad_output / float(numel)
    else:  # divisor = number of real (unpadded) inputs in each window
        pool = torch.ops.aten.avg_pool2d.default if nd == 2 else torch.ops.aten.avg_pool3d.default
        ones = torch.ops.aten.ones_like.default(torch.ops.aten.slice.Tensor(x, 1, 0, 1))  # [N,1,*S]
        counts = pool(ones, list(k), list(s), list(p), False, True) * float(numel)  # [N,1,*So]
        g = grad_output / counts
    weight = torch.ones((c, 1, *k), dtype=x.dtype, device=x.device)  # [C,1,*k]
    return _transpose_conv(g, weight, x.shape[2:], s, p, (1,) * nd, c)


def avg_pool2d_backward(grad_output, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return _avg_pool_backward(grad_output, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override, 2)


def avg_pool3d_backward(grad_output, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return _avg_pool_backward(grad_output, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override, 3)


def max_pool2d_backward_first_max(grad_output, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    """grad[N,C,Ho,Wo] -> [N,C,H,W]: each window's gradient goes to its first maximum (raster order)."""
    kh, kw = _tuple(kernel_size, 2)
    sh, sw = _tuple(stride, 2) if stride else (kh, kw)
    ph, pw = _tuple(padding, 2)
    if _tuple(dilation, 2) != (1, 1):
        raise NotImplementedError("max-pool backward with dilation != 1 is not supported by the ONNX export")
    h, w = x.shape[2], x.shape[3]
    ho, wo = grad_output.shape[2], grad_output.shape[3]
    # -inf padding: kh-1 extra rows at the end cover ceil_mode's last partial window
    xp = torch.ops.aten.constant_pad_nd.default(x, [pw, kw - 1, ph, kh - 1], float("-inf"))  # [N,C,H+ph+kh-1,..]
    taps = []
    for i in range(kh):
        for j in range(kw):
            t = torch.ops.aten.slice.Tensor(xp, 2, i, i + (ho - 1) * sh + 1, sh)
            taps.append(torch.ops.aten.slice.Tensor(t, 3, j, j + (wo - 1) * sw + 1, sw))  # [N,C,Ho,Wo]
    wmax = taps[0]
    for t in taps[1:]:
        wmax = torch.maximum(wmax, t)  # [N,C,Ho,Wo], an element of the same tensors: exact in any dtype
    zero = torch.zeros((), dtype=grad_output.dtype, device=grad_output.device)
    taken = None
    parts = []
    for t in taps:
        hit = t == wmax  # [N,C,Ho,Wo] bool
        if taken is not None:
            hit = hit & ~taken
        taken = hit if taken is None else taken | hit
        parts.append(torch.where(hit, grad_output, zero))
    k = kh * kw
    stacked = torch.stack(parts, dim=2).reshape(-1, k, ho, wo)  # [N*C, k, Ho, Wo]
    onehot = [[[[1.0 if (a * kw + b) == idx else 0.0 for b in range(kw)] for a in range(kh)]] for idx in range(k)]
    place = torch.tensor(onehot, dtype=grad_output.dtype, device=grad_output.device)  # [k,1,kh,kw] one-hot taps
    # output_padding stride-1: floor-mode pools leave up to stride-1 trailing rows that no window reads
    out = torch.ops.aten.convolution.default(stacked, place, None, [sh, sw], [0, 0], [1, 1], True, [sh - 1, sw - 1], 1)
    out = out.reshape(x.shape[0], x.shape[1], out.shape[2], out.shape[3])  # [N,C,(Ho-1)sh+kh,(Wo-1)sw+kw]
    out = torch.ops.aten.slice.Tensor(out, 2, ph, ph + h)
    return torch.ops.aten.slice.Tensor(out, 3, pw, pw + w)  # [N,C,H,W]


def select_backward(grad_output, input_sizes, dim, index):
    """grad[...] (dim removed) -> zeros of input_sizes with grad at ``index``: unsqueeze + Pad."""
    dim = dim % len(input_sizes)
    index = index % input_sizes[dim] if isinstance(index, int) and index < 0 else index
    g = torch.ops.aten.unsqueeze.default(grad_output, dim)
    return _pad_dim(g, dim, index, input_sizes[dim] - index - 1)


def slice_backward(grad_output, input_sizes, dim, start, end, step):
    """grad of x[..., start:end] -> Pad back to input_sizes (step 1 only)."""
    if step != 1:
        return NotImplemented
    dim = dim % len(input_sizes)
    size = input_sizes[dim]
    start = max(start + size, 0) if start < 0 else min(start, size)
    stop = start + grad_output.shape[dim]
    return _pad_dim(grad_output, dim, start, size - stop)


def _pad_dim(g: torch.Tensor, dim: int, before, after) -> torch.Tensor:
    # constant_pad_nd lists (before, after) pairs from the last dim backwards
    pads = [0, 0] * (g.dim() - dim - 1) + [before, after]
    return torch.ops.aten.constant_pad_nd.default(g, pads, 0.0)


def decomposition_table() -> dict:
    """The table for ``make_fx``: our rewrites plus PyTorch's forward-op rules for simple backwards."""
    from torch._decomp import get_decompositions

    aten = torch.ops.aten
    table = get_decompositions([
        aten.threshold_backward, aten.native_batch_norm_backward, aten.hardtanh_backward, aten.sigmoid_backward, aten.tanh_backward,
        aten.gelu_backward, aten.silu_backward,
    ])
    table.update({
        aten.convolution_backward.default: convolution_backward,
        aten.avg_pool2d_backward.default: avg_pool2d_backward,
        aten.avg_pool3d_backward.default: avg_pool3d_backward,
        aten.max_pool2d_with_indices_backward.default: max_pool2d_backward_first_max,
        aten.select_backward.default: select_backward,
        aten.slice_backward.default: slice_backward,
    })
    return table


__all__ = ["avg_pool2d_backward", "avg_pool3d_backward", "convolution_backward", "decomposition_table",
           "max_pool2d_backward_first_max", "select_backward", "slice_backward"]
