"""Explicit CUDA-graph capture of the whole gradient step, one graph per planned (N, H, W).

``capture(x)`` warms the step up on a side stream (cuDNN/cuBLAS handles and autotuning must
happen outside capture), then records ``step(static_x) -> (static_obj, static_grad)`` into a
``torch.cuda.CUDAGraph``; all graphs share one memory pool. ``run(x)`` copies ``x`` into the
static input and replays: one launch instead of ~300 kernels. The returned tensors are the
static outputs: valid until the next ``run`` of the same shape (the loop consumes the
gradient before the next step). A shape that was not captured runs uncaptured, with a warning.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

Step = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
WARMUP_STEPS = 3


class GraphedSteps:
    def __init__(self, step: Step, device: torch.device) -> None:
        if torch.device(device).type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}; valid: cuda, cuda:N")
        self.step, self.device = step, torch.device(device)
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.pool = None
        self._warned: set[tuple] = set()

    @staticmethod
    def key(x: torch.Tensor) -> tuple:
        return tuple(x.shape), x.dtype

    def capture(self, x: torch.Tensor) -> None:
        """Record the step for x's shape and dtype (x[N,3,H,W] on the device)."""
        key = self.key(x)
        if key in self.graphs:
            return
        with torch.cuda.device(self.device):
            static_x = x.detach().clone()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.step(static_x)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self.pool, stream=side):  # warm-up and capture on one stream
                static_obj, static_grad = self.step(static_x)
        self.graphs[key] = (graph, static_x, static_obj, static_grad)
        log.info("captured CUDA graph for %s", key)

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x[N,3,H,W] -> (objective[N], grad[N,3,H,W]) by graph replay (static outputs)."""
        entry = self.graphs.get(self.key(x))
        if entry is None:
            if self.key(x) not in self._warned:
                self._warned.add(self.key(x))
                log.warning("shape %s was not captured (not in prepare's shapes); running it uncaptured", self.key(x))
            return self.step(x)
        graph, static_x, static_obj, static_grad = entry
        static_x.copy_(x)
        graph.replay()
        return static_obj, static_grad
