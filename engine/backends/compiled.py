"""torch.compile backend: the eager backend's objective compiled, one static graph per shape.

Only the hot step is compiled (forward + objective; AOTAutograd compiles its backward).
``prepare`` warms every shape of the job up front so compilation never lands inside the
timed loop or a benchmark.
"""
from __future__ import annotations

import logging
import time

import torch

from ..step import DreamObjective, objective_and_grad
from .eager import EagerBackend

log = logging.getLogger(__name__)


def recompile_budget(shapes: list[tuple[int, int, int]]) -> int:
    """Graphs a job may need: every batch size 1..max N (split and shard-remainder batches) at each (H, W)."""
    if not shapes:
        return 8
    sizes = {(h, w) for _, h, w in shapes}
    return len(sizes) * max(n for n, _, _ in shapes) + 8


class CompiledBackend(EagerBackend):
    name = "compile"

    def __init__(self, module: DreamObjective, device: torch.device, precision: str = "fp32",
                 channels_last: bool | None = None, mode: str | None = None) -> None:
        super().__init__(module, device, precision, channels_last)
        self.mode = mode
        self._compiled = torch.compile(self.objective, dynamic=False, mode=mode)

    def prepare(self, shapes: list[tuple[int, int, int]]) -> None:
        import torch._dynamo.config as dynamo_config

        budget = recompile_budget(shapes)
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, budget)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * budget)
        for n, h, w in shapes:
            t0 = time.perf_counter()
            self.step(torch.zeros(n, 3, h, w, device=self.device, dtype=self.dtype))
            log.info("compiled step for (%d, 3, %d, %d) in %.1fs", n, h, w, time.perf_counter() - t0)

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return objective_and_grad(self._compiled, x)

    def describe(self) -> dict:
        return dict(super().describe(), compile_mode=self.mode or "default")
