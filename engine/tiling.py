"""The tile grid: where each fixed-size window sits in an image, cutting windows out, assembling centres.

A tile is a window of ``S = tile + 2 * overlap`` pixels on each side. Along an axis of length
``L > S`` the windows lie inside the image (so image borders are the network's own borders,
as untiled) and are spread evenly: ``k = 1 + ceil((L - S) / tile)`` windows, neighbours
overlapping by at least ``2 * overlap``. Each window keeps the gradient of its *core*, the
part of the axis nearer to it than to its neighbour (the overlap is split at its middle), so
every pixel's gradient comes from a window with at least ``overlap`` pixels of context on
every interior side. Along an axis with ``L <= S`` one window covers it and is zero-padded
(the model's normalized zero, what the first convolution pads with) up to ``S``.

An image (octave) with both sides ``<= S`` is not tiled at all: see :func:`needs_tiling`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ALIGN", "Window", "axis_windows", "cut", "needs_tiling", "pad_to_window", "put_core", "tile_grid",
           "tiled_gradient", "window_side"]


@dataclass(frozen=True)
class Window:
    """One tile of an image: window origin (its size is S x S) and the kept core, in image pixels."""

    y0: int
    x0: int
    cy0: int  # core rows [cy0, cy1), columns [cx0, cx1)
    cy1: int
    cx0: int
    cx1: int


# window origins are multiples of this: every registry layer's total stride (8, 16 or 32) divides it,
# so a tile's activations sit on the same sampling grid as the whole image's
ALIGN = 32


def window_side(tile: int, overlap: int) -> int:
    """S, the side of every tile's window."""
    return tile + 2 * overlap


def needs_tiling(h: int, w: int, tile: int, overlap: int) -> bool:
    """True when an h x w image (octave) is larger than one window; tile 0 means tiling is off."""
    return tile > 0 and max(h, w) > window_side(tile, overlap)


def axis_windows(length: int, tile: int, overlap: int, align: int = ALIGN) -> list[tuple[int, int, int]]:
    """Windows along one axis: [(start, core_start, core_end)]; cores partition [0, length).

    Starts are multiples of ``align`` and at most ``tile`` apart (neighbours overlap by >= 2 * overlap);
    the last window may reach up to ``align - 1`` px past the end (zero-padded).
    """
    side = window_side(tile, overlap)
    if length <= side:
        return [(0, 0, length)]
    pitch = max(1, tile // align)  # largest spacing between starts, in units of align
    span = -(-(length - side) // align)  # last start, in units of align (rounded up)
    k = 1 + -(-span // pitch)
    starts = [align * round(i * span / (k - 1)) for i in range(k)]
    # core boundary between windows i and i+1: the middle of their overlap
    bounds = [0] + [min(length, (starts[i + 1] + starts[i] + side) // 2) for i in range(k - 1)] + [length]
    return [(starts[i], bounds[i], bounds[i + 1]) for i in range(k)]


def tile_grid(h: int, w: int, tile: int, overlap: int, align: int = ALIGN) -> list[Window]:
    """Every window of an h x w image, row-major."""
    rows, cols = axis_windows(h, tile, overlap, align), axis_windows(w, tile, overlap, align)
    return [Window(y0, x0, cy0, cy1, cx0, cx1) for y0, cy0, cy1 in rows for x0, cx0, cx1 in cols]


def pad_to_window(x: torch.Tensor, wins: list[Window], side: int) -> torch.Tensor:
    """x[N,C,H,W] -> zeros appended right and bottom so every window fits (x itself if none are needed)."""
    h, w = x.shape[-2:]
    need_h = max(win.y0 for win in wins) + side
    need_w = max(win.x0 for win in wins) + side
    if need_h <= h and need_w <= w:
        return x
    return F.pad(x, (0, max(0, need_w - w), 0, max(0, need_h - h)))


def cut(padded: torch.Tensor, win: Window, side: int) -> torch.Tensor:
    """padded[N,C,H',W'] (from :func:`pad_to_window`) -> the window [N,C,S,S] (a view)."""
    return padded[..., win.y0:win.y0 + side, win.x0:win.x0 + side]


def put_core(out: torch.Tensor, tile_grad: torch.Tensor, win: Window) -> None:
    """Write the core of tile_grad[N,C,S,S] into out[N,C,H,W] at the window's place."""
    out[..., win.cy0:win.cy1, win.cx0:win.cx1] = tile_grad[
        ..., win.cy0 - win.y0:win.cy1 - win.y0, win.cx0 - win.x0:win.cx1 - win.x0]


def tiled_gradient(step, x: torch.Tensor, tile: int, overlap: int, batch: int) -> torch.Tensor:
    """The assembled gradient of one image x[1,3,H,W], its windows run ``batch`` at a time.

    ``step``: x[n,3,S,S] -> (objective[n], grad[n,3,S,S]) (a backend's ``step``). Used to measure
    the tile error and by tests; the job runs tiles through :mod:`engine.tiled`'s scheduler.
    """
    side = window_side(tile, overlap)
    wins = tile_grid(x.shape[-2], x.shape[-1], tile, overlap)
    padded = pad_to_window(x, wins, side)
    out = torch.empty_like(x)
    for i in range(0, len(wins), batch):
        chunk = wins[i:i + batch]
        _, g = step(torch.cat([cut(padded, win, side) for win in chunk]))  # [n,3,S,S]
        for j, win in enumerate(chunk):
            put_core(out, g[j:j + 1], win)
    return out
