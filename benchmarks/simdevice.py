"""A simulated device: a backend whose step costs modelled time on a virtual device clock.

Used to measure the *host* side of a job (decode, resize, loop bookkeeping, encode, write)
against a device of a given speed without owning one. ``step`` returns at once with a
zero gradient and advances the virtual clock by ``step_seconds(N, H, W)``, as an
asynchronous GPU queue would; ``synchronize`` sleeps until that clock and a ``fence`` (what
the runner waits on, once per batch) until the clock as it was when the fence was taken,
releasing the GIL like a real device wait. ``idle_seconds`` sums the gaps in which the
device had nothing queued (the host was late).
``mode="sync"`` sleeps inside every step instead (a device that blocks the host).
``host_seconds`` (optional) is the modelled host cost of issuing a step (driver launches): the
calling thread spins for it before the step is queued, holding the GIL as torch's launches do (a
sleep would release it and then wait up to a switch interval to get it back from the I/O threads).

Every figure produced with this backend is **simulated**, never a device measurement.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from dreamfleet.engine.backends.base import Backend, Fence

StepTime = Callable[[int, int, int], float]  # (N, H, W) -> seconds of device time for one step


def _spin(seconds: float) -> None:
    """Busy for ``seconds`` on this thread without releasing the GIL on purpose (as a kernel launch is)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def per_image_time(seconds_per_image_step: float) -> StepTime:
    """A device whose step time is proportional to the pixels of the batch (reference: 1 image)."""
    def step_seconds(n: int, h: int, w: int) -> float:
        return seconds_per_image_step * n
    return step_seconds


class SimulatedDeviceBackend(Backend):
    name = "simulated"

    def __init__(self, step_seconds: StepTime, mode: str = "async", label: str = "simulated",
                 host_seconds: StepTime | None = None) -> None:
        super().__init__()
        if mode not in ("async", "sync"):
            raise ValueError(f"unknown simulated device mode {mode!r}; valid: async, sync")
        self.step_seconds, self.mode, self.label = step_seconds, mode, label
        self.host_seconds = host_seconds  # modelled host cost of issuing one step (kernel launches), slept
        self.device_clock = 0.0  # perf_counter time at which the virtual device goes idle
        self.busy_seconds = 0.0  # total modelled device time
        self.steps = 0
        self.idle_seconds = 0.0  # device idle between its first and last step (the host was late)
        self.idle_first_step = 0.0  # ... of which before the first step of a batch (after a synchronize)
        self.first_step_at: float | None = None  # perf_counter time the first step was queued
        self.prepared_at: float | None = None  # perf_counter time of prepare (the runner's work starts next)
        self._synced = True
        self._zeros: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare(self, shapes: list[tuple[int, int, int]]) -> None:
        self.prepared_at = time.perf_counter()

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [N,3,H,W] -> (objective[N], grad[N,3,H,W]) of zeros; only the clock moves
        n, _, h, w = x.shape
        cost = self.step_seconds(n, h, w)
        self.busy_seconds += cost
        self.steps += 1
        if self.host_seconds is not None:
            _spin(self.host_seconds(n, h, w))  # the host thread is busy launching
        now = time.perf_counter()
        if self.first_step_at is None:
            self.first_step_at = now
        if self.steps > 1 and now > self.device_clock:
            self.idle_seconds += now - self.device_clock
            if self._synced:
                self.idle_first_step += now - self.device_clock
        self._synced = False
        self.device_clock = max(self.device_clock, now) + cost
        if self.mode == "sync":
            self.synchronize()
        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self._zeros:
            self._zeros[key] = (x.new_zeros(n), torch.zeros_like(x))
        return self._zeros[key]

    def synchronize(self) -> None:
        self._wait_until(self.device_clock)

    def fence(self) -> Fence:
        """The device clock now: waiting on it sleeps until the work queued so far is done."""
        clock = self.device_clock
        return Fence(lambda: self._wait_until(clock))

    def _wait_until(self, clock: float) -> None:
        if clock >= self.device_clock:
            self._synced = True  # the device runs dry unless the host queued more
        wait = clock - time.perf_counter()
        if wait > 0:
            time.sleep(wait)  # releases the GIL, as a real device wait does

    def describe(self) -> dict:
        return dict(super().describe(), backend=self.name, simulated=self.label, mode=self.mode)
