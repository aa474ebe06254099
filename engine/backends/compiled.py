"""torch.compile backend: the eager backend's objective compiled, one static graph per shape.

Only the hot step is compiled (forward + objective; AOTAutograd compiles its backward).
``prepare`` warms every shape of the job up front so compilation never lands inside the
timed loop or a benchmark.

``mode`` (``--compile-mode``): ``auto`` is ``reduce-overhead`` on CUDA (Inductor's CUDA-graph
trees: every shape's forward and backward replayed as graphs) and ``default`` elsewhere;
``graphs`` compiles with ``default`` and captures the whole gradient step per planned shape into
an explicit ``torch.cuda.CUDAGraph`` with static buffers (:mod:`engine.backends.graphs`).
"""
from __future__ import annotations

import logging
import time

import torch

from ..step import DreamObjective, objective_and_grad
from ..vocabulary import COMPILE_MODES
from .eager import EagerBackend

log = logging.getLogger(__name__)


def recompile_budget(shapes: list[tuple[int, int, int]]) -> int:
    """Graphs a job may need: every batch size 1..max N (split and shard-remainder batches) at each (H, W)."""
    if not shapes:
        return 8
    sizes = {(h, w) for _, h, w in shapes}
    return len(sizes) * max(n for n, _, _ in shapes) + 8


def resolve_compile_mode(mode: str | None, device: torch.device) -> str:
    """'auto'/None -> 'reduce-overhead' on CUDA, 'default' elsewhere; CUDA-graph modes need CUDA."""
    mode = mode or "auto"
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; valid: {', '.join(COMPILE_MODES)}")
    if mode == "auto":
        return "reduce-overhead" if device.type == "cuda" else "default"
    if mode in ("reduce-overhead", "graphs") and device.type != "cuda":
        raise ValueError(f"compile mode {mode!r} captures CUDA graphs and needs a CUDA device; "
                         f"valid on {device.type}: default, max-autotune, max-autotune-no-cudagraphs, auto")
    return mode


class CompiledBackend(EagerBackend):
    name = "compile"

    def __init__(self, module: DreamObjective, device: torch.device, precision: str = "fp32",
                 channels_last: bool | None = None, mode: str | None = None) -> None:
        super().__init__(module, device, precision, channels_last)
        self.mode = resolve_compile_mode(mode, device)
        inductor_mode = "default" if self.mode == "graphs" else self.mode
        self._compiled = torch.compile(self.objective, dynamic=False, mode=inductor_mode)
        self._graphs = None
        if self.mode == "graphs":
            from .graphs import GraphedSteps

            self._graphs = GraphedSteps(self._eager_step, device)

    def prepare(self, shapes: list[tuple[int, int, int]]) -> None:
        import torch._dynamo.config as dynamo_config

        budget = recompile_budget(shapes)
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, budget)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * budget)
        for n, h, w in shapes:
            t0 = time.perf_counter()
            x = torch.zeros(n, 3, h, w, device=self.device, dtype=self.dtype)
            if self._graphs is not None:
                self._graphs.capture(x)
            else:
                self.step(x)
            log.info("compiled step for (%d, 3, %d, %d) in %.1fs", n, h, w, time.perf_counter() - t0)

    def _eager_step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return objective_and_grad(self._compiled, x)

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._graphs is not None:
            return self._graphs.run(x)
        if self.mode == "reduce-overhead":
            # one gradient step = one CUDA-graph-trees iteration; outputs of the previous step may be reused
            torch.compiler.cudagraph_mark_step_begin()
        return objective_and_grad(self._compiled, x)

    def describe(self) -> dict:
        return dict(super().describe(), compile_mode=self.mode)
