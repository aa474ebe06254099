"""The backend interface: every way of computing the ascent gradient sits behind it.

A backend owns *how* the per-image objective and its gradient with respect to the
input are computed (torch eager, torch.compile, ONNX Runtime, TensorRT). It never
owns the update rule: the octave loop (``engine.loop``) normalizes the gradient,
steps, jitters and clamps identically for every backend.

Life cycle (Polygraphy style)::

    with backend:                      # __enter__ -> self, __exit__ -> close()
        backend.prepare(shapes)        # every (N, H, W) the job will run
        obj, grad = backend.step(x)    # x[N,3,H,W] -> obj[N], grad[N,3,H,W]
        fence = backend.fence()        # after a batch's steps: a marker in the device's queue
        fence.wait()                   # the host waits for that batch only (later ones keep running)
        backend.synchronize()          # wait for everything queued so far
"""
from __future__ import annotations

import abc

import torch


def is_oom(exc: BaseException) -> bool:
    """True when a step failed for lack of device memory (a smaller batch may pass)."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Fence:
    """A point in a backend's device queue; ``wait()`` returns once the device has passed it."""

    def __init__(self, wait) -> None:
        self._wait = wait

    def wait(self) -> None:
        self._wait()


class Backend(abc.ABC):
    """Computes ``objective[N]`` and ``d objective / d x`` for a batch ``x[N,3,H,W]``."""

    #: short name used on the command line (``--backend NAME``)
    name: str = "abstract"

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def prepare(self, shapes: list[tuple[int, int, int]]) -> None:
        """Get ready for every (N, H, W) in ``shapes`` (compile, build profiles, warm up).

        The default does nothing; backends that specialize on shapes override it.
        """

    @abc.abstractmethod
    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x[N,3,H,W] (model's normalized input space) -> (objective[N], grad[N,3,H,W]).

        The returned tensors live on ``self.device`` with ``x``'s dtype. Each image's
        objective and gradient depend on that image alone (no batch coupling).
        """

    def synchronize(self) -> None:
        """Wait until the device has finished the work queued so far.

        The runner calls this once per batch, before it reads results on the host; nothing inside
        the step loop syncs. The default waits for the current CUDA stream when on CUDA.
        """
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def fence(self) -> "Fence":
        """A marker after the work queued so far; ``fence().wait()`` blocks until the device passed it.

        The runner takes one after each batch's steps and its copy to the host, queues the next
        batch, and only then waits on the fence, so the device never idles while the host wakes
        up. The default records a CUDA event on the current stream (on CUDA), else synchronizes;
        a backend that overrides ``synchronize`` (its own streams) gets ``synchronize`` here too
        unless it also overrides ``fence``.
        """
        if self.device.type == "cuda" and type(self).synchronize is Backend.synchronize:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            return Fence(event.synchronize)
        return Fence(self.synchronize)

    def close(self) -> None:
        """Release sessions, engines and device memory. Safe to call twice."""

    def describe(self) -> dict:
        """Facts about this backend for reports and benchmark rows."""
        return {"backend": self.name, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", "")}

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
