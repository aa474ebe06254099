"""gordicaleksa/pytorch-deepdream's static-image loop, re-implemented as the peer dreamfleet is timed against.

Our own harness of the peer's algorithm (its ``deepdream.py`` and ``utils/utils.py``), faithful
in everything that costs time, not a strawman:

- the model: torchvision VGG16 ``features[0..22]`` (up to relu4_3) in four slices (relu1_2, relu2_2,
  relu3_3, relu4_3 all returned), weights frozen (``requires_grad=False``), eval mode, fp32, NCHW;
  random init seeded like dreamfleet's, so both run a bit-identical network;
- one image at a time; the image lives as a float32 HWC numpy array between octaves;
- pyramid: ``pyramid_size`` levels, level ``l`` at ``round(float32(base) * ratio ** (l - size + 1))``;
  the *whole* dreamed image is resized up (``cv2.resize``, bilinear) to the next level, no detail carry;
- per iteration: a random circular shift (``np.random.randint(-s, s + 1, 2)``, ``torch.roll`` under
  ``no_grad``, a fresh leaf), forward, ``MSELoss(mean)`` against ``zeros_like`` on relu4_3,
  ``loss.backward()``, the gradient smoothed by the *cascade* Gaussian (three 9x9 depthwise kernels
  at 0.5, 1 and 2 x sigma, reflect padding, averaged; the module and its kernels rebuilt every
  iteration, as the peer does), sigma = (it + 1) / iterations * 2 + 0.5; the gradient standardized
  (minus its mean, over its std, over the whole tensor), ``x += lr * g``, the gradient zeroed, the
  image clamped to the valid pixel range by ``max(min(x, hi), lo)``; the shift undone.

One difference, in the peer's favour: the peer builds the model for every image; here it is built
once (``PeerDream.__init__``), so only the dreaming is timed.
Run as a child process by ``benchmarks/peer_bench.py`` (``python -m dreamfleet.benchmarks.peer_baseline``),
with the process settings of a plain ``python deepdream.py``: torch on the main thread only, no
``THP_MEM_ALLOC_ENABLE``, no ``DREAMFLEET_*`` variables. On a machine with more runnable threads than cores, such a
process spends much of its CPU time in libgomp's barrier spin-waits; the real peer does too
(docs/peer-comparison.md, point 3).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SLICES = ((0, 4), (4, 9), (9, 16), (16, 23))  # relu1_2, relu2_2, relu3_3, relu4_3
KERNEL_SIZE = 9


class PeerVgg16(torch.nn.Module):
    """x[1,3,H,W] -> (relu1_2, relu2_2, relu3_3, relu4_3); frozen, eval mode."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # dreamfleet's random init (engine/build.py): the same weights
            features = torchvision.models.vgg16(weights=None).eval().features
        self.slices = torch.nn.ModuleList(torch.nn.Sequential(*features[a:b]) for a, b in SLICES)
        for p in self.parameters():
            p.requires_grad = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for s in self.slices:
            x = s(x)
            outs.append(x)
        return tuple(outs)


def cascade_kernels(sigma: float) -> torch.Tensor:
    """[3 kernels, 3 channels, 1, 9, 9]: normalized isotropic Gaussians at 0.5, 1 and 2 x sigma."""
    t = torch.arange(KERNEL_SIZE, dtype=torch.float32) - (KERNEL_SIZE - 1) / 2
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    out = []
    for s in (0.5 * sigma, sigma, 2.0 * sigma):
        k = torch.exp(-(ys / s) ** 2 / 2) * torch.exp(-(xs / s) ** 2 / 2) / (2 * math.pi * s * s)
        out.append((k / k.sum()).view(1, 1, KERNEL_SIZE, KERNEL_SIZE).repeat(3, 1, 1, 1))
    return torch.stack(out)


def cascade_smooth(g: torch.Tensor, sigma: float) -> torch.Tensor:
    """g[1,3,H,W] -> the mean of its three Gaussian blurs (reflect-padded depthwise 9x9 convolutions)."""
    kernels = cascade_kernels(sigma)  # rebuilt per call, like the peer's module
    pad = KERNEL_SIZE // 2
    g = F.pad(g, [pad, pad, pad, pad], mode="reflect")
    return sum(F.conv2d(g, k, groups=g.shape[1]) for k in kernels) / 3


class PeerDream:
    """``dream(img)``: the peer's ``deep_dream_static_image`` on one RGB float32 HWC image in [0, 1]."""

    def __init__(self, pyramid_size: int = 4, pyramid_ratio: float = 1.4, iterations: int = 10, lr: float = 0.09,
                 shift: int = 32, smoothing: float = 0.5, seed: int = 0) -> None:
        self.model = PeerVgg16()
        self.pyramid_size, self.pyramid_ratio, self.iterations = pyramid_size, pyramid_ratio, iterations
        self.lr, self.shift, self.smoothing = lr, shift, smoothing
        self.lo = torch.from_numpy(-MEAN / STD).view(1, 3, 1, 1)
        self.hi = torch.from_numpy((1 - MEAN) / STD).view(1, 3, 1, 1)
        self.rng = np.random.RandomState(seed)

    def level_shape(self, base: tuple[int, int], level: int) -> tuple[int, int]:
        """(h, w) of pyramid ``level`` (0 = smallest), rounded like the peer."""
        ratio = self.pyramid_ratio ** (level - self.pyramid_size + 1)
        h, w = np.round(np.float32(base) * ratio).astype(np.int32)
        return int(h), int(w)

    def _roll(self, x: torch.Tensor, dh: int, dw: int) -> torch.Tensor:
        with torch.no_grad():
            rolled = torch.roll(x, shifts=(dh, dw), dims=(2, 3))
        rolled.requires_grad = True
        return rolled

    def _ascent(self, x: torch.Tensor, it: int) -> None:
        out = self.model(x)[-1]  # relu4_3
        loss = torch.mean(torch.stack([torch.nn.MSELoss(reduction="mean")(out, torch.zeros_like(out))]))
        loss.backward()
        g = cascade_smooth(x.grad.data, (it + 1) / self.iterations * 2.0 + self.smoothing)
        g = (g - torch.mean(g)) / torch.std(g)
        x.data += self.lr * g
        x.grad.data.zero_()
        x.data = torch.max(torch.min(x, self.hi), self.lo)

    def dream(self, img: np.ndarray) -> np.ndarray:
        """img[H,W,3] float32 RGB in [0,1] -> dreamed [H,W,3] in [0,1]."""
        img = (img - MEAN) / STD
        base = img.shape[:2]
        for level in range(self.pyramid_size):
            h, w = self.level_shape(base, level)
            img = cv2.resize(img, (w, h))
            x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).contiguous().unsqueeze(0)
            x.requires_grad = True  # [1,3,h,w]
            for it in range(self.iterations):
                dh, dw = (int(v) for v in self.rng.randint(-self.shift, self.shift + 1, 2))
                x = self._roll(x, dh, dw)
                self._ascent(x, it)
                x = self._roll(x, -dh, -dw)
            img = np.moveaxis(x.detach().numpy()[0], 0, 2)
        return np.clip(img * STD + MEAN, 0.0, 1.0)


def load_rgb(path: Path) -> np.ndarray:
    """The peer's ``load_image`` at the file's own size: RGB float32 HWC in [0, 1]."""
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return bgr[:, :, ::-1].astype(np.float32) / 255.0


def main(argv: list[str] | None = None) -> int:
    """Child process: dream every image of a folder one at a time; print one JSON line of timings."""
    p = argparse.ArgumentParser(prog="python -m dreamfleet.benchmarks.peer_baseline", description=__doc__.splitlines()[0])
    p.add_argument("inputs", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--octaves", type=int, default=4)
    p.add_argument("--octave-scale", type=float, default=1.4)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--jitter", type=int, default=32)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    peer = PeerDream(args.octaves, args.octave_scale, args.iterations, shift=args.jitter)
    args.output.mkdir(parents=True, exist_ok=True)
    paths = sorted(q for q in args.inputs.iterdir() if q.suffix.lower() in (".png", ".jpg", ".jpeg"))
    t0, cpu0, flt0 = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for q in paths:
        out = peer.dream(load_rgb(q))
        cv2.imwrite(str(args.output / f"{q.stem}.png"), (out[:, :, ::-1] * 255).astype(np.uint8))
    work, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(json.dumps({"images": len(paths), "work_seconds": round(work, 3), "work_cpu_seconds": round(cpu, 3),
                      "work_page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt0,
                      "torch_threads": torch.get_num_threads(),
                      "octave_shapes": [peer.level_shape(load_rgb(paths[0]).shape[:2], lv)
                                        for lv in range(args.octaves)] if paths else []}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
