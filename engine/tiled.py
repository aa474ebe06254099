"""The tile scheduler: images larger than one tile window, dreamed at full size in fixed-shape tile batches.

Every image in flight runs the loop's own generator (``loop.dream_steps``: octave pyramid,
carried detail, the image's jitter stream, ``loop.ascent`` with its per-image gradient
normalization and clamp over the *whole* image). Each time it asks for the gradient of its
rolled octave the scheduler answers:

- an octave that fits one window (both sides <= S = tile + 2 * overlap) runs untiled, batched
  with in-flight images of the same shape, exactly as the untiled loop would run it;
- a larger octave is cut into S x S windows (``engine.tiling``); the tiles join one FIFO queue
  shared by every image in flight and run ``batch_size`` at a time as x[N,3,S,S]. For a
  fixed-shape backend (TensorRT, compile, anything on CUDA: :func:`pads_short_batches`) a short
  batch is zero-filled to N, so every tile batch of a job has one shape; eager and onnxruntime
  on CPU run it short (x[n,3,S,S], n < N) instead of computing empty slots. Each tile's core is
  written into the image's gradient; when the image's last tile is back its step completes and
  it asks for the next gradient.

So tiles of different images and octaves share batches, and the model never sees more than
N x S x S pixels at once, whatever the image size. Images are admitted while the queue holds
less than one batch of tiles, at most ``batch_size`` in flight. Host work overlaps the device
as in the runner's pipeline: the runner's decode threads decode the next ``LOOKAHEAD`` images
ahead of admission; a finished image goes down as uint8 through the runner's ``HostTransfer``
(side stream on CUDA) and is waited for only after the next round of device work is queued
(one fence wait per image, with the device busy); the runner's writer threads encode and
write it (a 2400x1600 PNG takes 1.5 s to encode on one core), at most ``LOOKAHEAD`` writes
outstanding. A tile batch that
runs out of device memory halves the tile batch size for the rest of the job and is requeued
(as the runner halves a bucket); any other failing batch is retried per image; an image that
fails alone becomes a failure record, the rest go on.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .backends.base import is_oom
from .hostmem import bound_host_allocator
from .imageio import ImageLoadError
from .loop import StepGen, dream_steps
from .pipeline import Window as Futures
from .report import ImageRecord
from .space import ImageSpace
from .tiling import Window, cut, needs_tiling, pad_to_window, put_core, tile_grid, window_side

if TYPE_CHECKING:
    from .device_loop import DeviceLoop, WorkItem

log = logging.getLogger(__name__)


LOOKAHEAD = 2  # decoded full-size images waiting for admission

# backends that run any batch size at no extra cost on CPU: a short tile batch is not zero-filled for them
SHAPE_FLEXIBLE = ("eager", "onnxruntime")


def pads_short_batches(backend) -> bool:
    """True when a short tile batch must be zero-filled to the job's one tile shape.

    Fixed-shape backends (TensorRT profiles, compile graphs, CUDA graphs, cuDNN's per-shape
    search) want one shape; eager and onnxruntime on CPU gain nothing from it and would spend
    up to (N - 1) / N of a batch computing zeros.
    """
    return not (backend.device.type == "cpu" and backend.name in SHAPE_FLEXIBLE)


@dataclass(eq=False)
class _Flight:
    """One image in flight."""

    item: WorkItem
    alpha: object
    steps: StepGen
    load_s: float
    t0: float
    request: torch.Tensor | None = None  # rolled z[1,3,h,w] whose gradient the loop asked for
    padded: torch.Tensor | None = None  # request zero-padded to at least S x S
    grad: torch.Tensor | None = None  # the gradient being assembled, [1,3,h,w]
    waiting: int = 0  # tiles of this step not back yet
    dead: bool = False
    done: Callable | None = None  # run_steps: gets the final z (or the failure reason) instead of a write


class TileScheduler:
    """Dreams a list of large work items with the runner's backend; ``emit`` gets one record per item."""

    def __init__(self, runner: DeviceLoop, emit: Callable[[ImageRecord], None]) -> None:
        self.runner, self.emit, self.cfg, self.backend = runner, emit, runner.cfg, runner.backend
        self.batch, self.side = self.cfg.batch_size, window_side(self.cfg.tile, self.cfg.tile_overlap)
        self.space = ImageSpace.create(runner.dm.spec, self.cfg, runner.device, runner.dtype)
        self.queue: deque[tuple[_Flight, Window]] = deque()
        self.untiled: list[_Flight] = []
        self.flights: list[_Flight] = []
        self.tile_batches = self.tile_slots_filled = self.tile_slots = 0
        self.pad_batches = pads_short_batches(self.backend)
        if runner.device.type == "cpu":
            bound_host_allocator()

    def run(self, items: list[WorkItem]) -> None:
        todo = deque(items)
        decode_pool, self.write_pool = self.runner.pools()
        lanes = max(1, self.runner.io_threads)
        self.decoded, self.writes = Futures(LOOKAHEAD), Futures(2 * self.batch + lanes)  # as the runner's windows
        self.landing: list[tuple] = []  # (flight, transfer.Pending, fence, timings) of finished images
        self.landed: list[tuple] = []  # ... finished before the current round's device work was queued

        def refill() -> None:
            while todo and not self.decoded.full():
                item = todo.popleft()
                self.decoded.push(decode_pool.submit(self.runner.load_input, item), item)

        try:
            refill()
            while len(self.decoded) or self.flights:
                self.landed, self.landing = self.landing, []
                while len(self.decoded) and (not self.flights or (len(self.queue) < self.batch
                                                                  and len(self.flights) < self.batch)):
                    self._admit(*self.decoded.pop())
                    refill()
                if self.untiled:
                    self._run_untiled()
                elif self.queue:
                    self._run_tiles()
                elif self.flights:
                    raise RuntimeError("tile scheduler stalled: images in flight but no work queued")
                landed, self.landed = self.landed, []
                self._land(landed)  # waits on their fences while the device runs what was just queued
        finally:
            try:  # finished images are written and recorded even when the loop stopped on an error
                landed, self.landed, self.landing = self.landed + self.landing, [], []
                self._land(landed)
            finally:
                while len(self.writes):  # every queued write finishes (or fails) and is recorded
                    self.emit(self.writes.pop()[1])
        if self.tile_batches:
            log.info("tiles: %d batches, %.0f%% of their slots filled", self.tile_batches,
                     100.0 * self.tile_slots_filled / self.tile_slots)

    def run_steps(self, gens: list[StepGen]) -> list:
        """Answer step generators (e.g. a video's frames larger than one window, each [1,3,h,w]) with tiled
        gradients, their tiles sharing batches, until each returns: per generator its z, or the failure reason."""
        out: list = [None] * len(gens)
        for k, steps in enumerate(gens):
            f = _Flight(None, None, steps, 0.0, time.perf_counter(), done=lambda v, k=k: out.__setitem__(k, v))
            self.flights.append(f)
            self._advance(f, None)
        while self.flights:
            if self.untiled:
                self._run_untiled()
            elif self.queue:
                self._run_tiles()
            else:
                raise RuntimeError("tile scheduler stalled: steps in flight but no work queued")
        return out

    # --- images in and out ---
    def _admit(self, item: WorkItem, img) -> None:
        """Start dreaming a decoded image (or record why it could not be read or started)."""
        if isinstance(img, ImageLoadError):
            self.emit(ImageRecord(item.path, item.rel, "failed", reason=str(img), worker=self.runner.worker))
            return
        load_s = img.seconds["decode"] + img.seconds["resize"]
        try:  # uint8 up through the runner's transfer (pinned, side stream on CUDA), a buffer of its own
            x = self.runner.transfer.upload(img.data[None], reuse=False).to(self.runner.dtype)  # [1,3,H,W] pixels
            steps = dream_steps(self.space.to_model(x), self.cfg, self.runner.dm.spec, [item.rel], self.space)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory for this image alone
            self.emit(ImageRecord(item.path, item.rel, "failed", reason=f"dream failed: {type(exc).__name__}: {exc}",
                                  shape=list(item.hw), worker=self.runner.worker, retryable=True))
            return
        del x
        flight = _Flight(item, img.alpha, steps, load_s, time.perf_counter())
        self.flights.append(flight)
        self._advance(flight, None)

    def _advance(self, f: _Flight, grad: torch.Tensor | None) -> None:
        """Give the loop its gradient (None: start it) and queue what it asks for next."""
        f.request = f.padded = f.grad = None
        try:
            req = next(f.steps) if grad is None else f.steps.send(grad)  # [1,3,h,w]
        except StopIteration as done:
            self._finish(f, done.value)
            return
        except Exception as exc:  # noqa: BLE001 - a bad image must not stop the others
            self._fail(f, f"{type(exc).__name__}: {exc}")
            return
        f.request = req
        h, w = req.shape[-2:]
        if not needs_tiling(h, w, self.cfg.tile, self.cfg.tile_overlap):
            self.untiled.append(f)
            return
        wins = tile_grid(h, w, self.cfg.tile, self.cfg.tile_overlap)
        try:
            f.padded, f.grad, f.waiting = pad_to_window(req, wins, self.side), torch.empty_like(req), len(wins)
        except Exception as exc:  # noqa: BLE001
            self._fail(f, f"{type(exc).__name__}: {exc}")
            return
        self.queue.extend((f, win) for win in wins)

    def _finish(self, f: _Flight, z: torch.Tensor) -> None:
        """Queue the dreamed image's way to the host (uint8, non-blocking); it lands after the next device work."""
        self.flights.remove(f)
        if f.done is not None:
            f.done(z)
            return
        timings = {"load": round(f.load_s, 4), "dream": round(time.perf_counter() - f.t0, 4)}
        try:  # [1,3,H,W] -> uint8, on its way to a pinned buffer of its own
            pending = self.runner.transfer.download(self.space.to_pixels(z), reuse=False)
        except Exception as exc:  # noqa: BLE001
            self._record_failure(f, f"{type(exc).__name__}: {exc}")
            return
        self.landing.append((f, pending, self.backend.fence(), timings))

    def _land(self, landed: list[tuple]) -> None:
        """Wait for finished images on the host and hand them to the runner's writer threads (encode, atomic write)."""
        for f, pending, fence, timings in landed:
            out = self.runner.host_results(pending, fence)[0]  # [3,H,W] uint8
            while self.writes.full():
                self.emit(self.writes.pop()[1])
            self.writes.push(self.write_pool.submit(self.runner.write_output, f.item, out, f.alpha, timings))
        for _, rec in self.writes.ready():
            self.emit(rec)

    def _fail(self, f: _Flight, reason: str) -> None:
        """An image in flight fails alone: its generator, queued tiles and waiting octave go; the rest go on."""
        if f.dead or f not in self.flights:
            return
        f.dead = True
        f.steps.close()
        self.flights.remove(f)
        self.untiled = [g for g in self.untiled if g is not f]
        self.queue = deque(t for t in self.queue if t[0] is not f)
        self._record_failure(f, reason)

    def _record_failure(self, f: _Flight, reason: str) -> None:
        if f.done is not None:
            f.done(reason)
            return
        log.warning("dream failed for %s: %s", f.item.rel, reason)
        self.emit(ImageRecord(f.item.path, f.item.rel, "failed", reason=f"dream failed: {reason}",
                              shape=list(f.item.hw), worker=self.runner.worker, retryable=True))

    # --- gradients ---
    def _run_untiled(self) -> None:
        """Every waiting octave that fits one window, in batches of one shape."""
        waiting, self.untiled = self.untiled, []
        groups: dict[tuple[int, int], list[_Flight]] = defaultdict(list)
        for f in waiting:
            groups[tuple(f.request.shape[-2:])].append(f)
        for group in groups.values():
            for i in range(0, len(group), self.batch):
                for f, grad in self._untiled_grads(group[i:i + self.batch]):
                    self._advance(f, grad)

    def _untiled_grads(self, chunk: list[_Flight]) -> list[tuple[_Flight, torch.Tensor]]:
        try:
            _, g = self.backend.step(torch.cat([f.request for f in chunk]))  # [n,3,h,w]
            return [(f, g[i:i + 1]) for i, f in enumerate(chunk)]
        except Exception as exc:  # noqa: BLE001
            reason = f"{type(exc).__name__}: {exc}"
        # retried outside the except block (its traceback would keep the batch alive)
        if len(chunk) == 1:
            self._fail(chunk[0], reason)
            return []
        half = len(chunk) // 2
        return self._untiled_grads(chunk[:half]) + self._untiled_grads(chunk[half:])

    def _run_tiles(self) -> None:
        """One batch of tiles from the head of the queue; images whose last tile came back step on."""
        chunk = [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]
        self._tile_batch(chunk)
        for f in dict.fromkeys(f for f, _ in chunk):
            if not f.dead and f.waiting == 0:
                self._advance(f, f.grad)

    def _tile_batch(self, chunk: list[tuple[_Flight, Window]]) -> None:
        s = self.side
        n = max(self.batch, len(chunk)) if self.pad_batches else len(chunk)  # (a retried chunk may exceed a halved batch)
        x = None
        try:
            x = torch.empty(n, 3, s, s, device=self.runner.device, dtype=self.runner.dtype)  # [n,3,S,S]
            for j, (f, win) in enumerate(chunk):
                x[j] = cut(f.padded, win, s)[0]
            x[len(chunk):] = 0.0  # zero-filled slots of a padded short batch
            _, g = self.backend.step(x)  # [n,3,S,S]
        except Exception as exc:  # noqa: BLE001
            reason, oom = f"{type(exc).__name__}: {exc}", is_oom(exc)
        else:
            self.tile_batches += 1
            self.tile_slots_filled += len(chunk)
            self.tile_slots += n
            for j, (f, win) in enumerate(chunk):
                put_core(f.grad, g[j:j + 1], win)
                f.waiting -= 1
            return
        del x
        if oom and self.batch > 1:  # out of memory: smaller tile batches from now on, this one requeued
            self.batch = max(1, min(self.batch, n) // 2)
            if self.runner.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning("tile batch of %d ran out of memory (%s); tile batch size is now %d", n, reason, self.batch)
            self.queue.extendleft(reversed(chunk))
            return
        owners = list(dict.fromkeys(f for f, _ in chunk))
        if len(owners) == 1:
            self._fail(owners[0], reason)
            return
        for owner in owners:  # each image's tiles alone: the failing one fails, the others go on
            self._tile_batch([t for t in chunk if t[0] is owner])
