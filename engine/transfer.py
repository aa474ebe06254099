"""Host <-> device transfers of a batch: pinned reused buffers, uint8 on the wire, one sync per batch.

``HostTransfer.upload(x)`` takes a host batch ``x[N,3,H,W]`` of uint8 pixels (0-255) or float
pixels in [0,1]; on CUDA it stages it in a pinned host buffer kept per (shape, dtype), copies
it with ``non_blocking=True`` on an upload side stream, and makes torch's current stream wait for that
copy (the device never waits for the host). uint8 becomes float in [0,1] *on the device*; the
model normalization follows on the device in the loop (``ImageSpace.to_model``).

``download(pixels)`` quantizes the dreamed pixels ``[N,3,H,W]`` in [0,1] to uint8 on the device
(round half up, exactly what ``imageio.save_image`` does to floats), copies them to a pinned
host buffer on a download side stream (not the upload one: the next batch's upload must not queue
behind this batch's compute) once the compute stream is done, and returns a ``Pending``:
``Pending.wait()`` is the batch's one host sync (an event), then hands out per-image uint8
``[3,H,W]`` host tensors. Download buffers rotate in a ring of ``depth`` per shape: results
stay valid until ``depth`` more downloads of the same shape (enough for a pipeline that saves
one batch while the next dreams). ``download(pixels, reuse=False)`` is for one-off shapes (the
tile scheduler's full-size images, any number of them in flight): a fresh pinned buffer per
call, which PyTorch's caching host allocator recycles once the result is dropped; nothing is
kept per shape. ``upload(x, reuse=False)`` is the same for uploads.

Backends that run on their own CUDA stream must join it back into torch's current stream
before returning from ``step`` (TensorRT and ONNX Runtime do), so ordering on the current
stream covers every backend. On CPU nothing is pinned and no stream exists; on the ``meta``
device (simulated devices) the download hands back the last uploaded host pixels of that shape as
uint8 (zeros if none): a stand-in for the dream, so writers encode a photo, not a black frame.
"""
from __future__ import annotations

from typing import Callable

import torch


class Pending:
    """Results of one ``download``: ``wait()`` syncs once and returns per-image uint8 [3,H,W] host tensors."""

    def __init__(self, host: torch.Tensor, event=None) -> None:
        self.host, self.event = host, event

    def wait(self, device_wait: Callable[[], None] | None = None) -> list[torch.Tensor]:
        """The batch's one sync: the copy's event on CUDA, else ``device_wait`` (e.g. a simulated device)."""
        if self.event is not None:
            self.event.synchronize()
        elif device_wait is not None:
            device_wait()
        return list(self.host.unbind(0))


class HostTransfer:
    def __init__(self, device: torch.device, depth: int = 3) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.device, self.depth = torch.device(device), depth
        self.cuda = self.device.type == "cuda"
        # one side stream each way: an upload queued behind a download would wait for that download's batch to
        # finish computing, and the next batch could not start until its pixels were copied after it
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None  # uploads
        self.down_stream = torch.cuda.Stream(self.device) if self.cuda else None  # downloads
        self._up: dict[tuple, tuple[torch.Tensor, object]] = {}  # (shape, dtype) -> (pinned buffer, copy done)
        self._down: dict[tuple, list] = {}  # shape -> ring of (pinned uint8 buffer, copy done)
        self._turn: dict[tuple, int] = {}
        self._meta_src: dict[tuple, torch.Tensor] = {}  # meta device: shape -> last uploaded host pixels
        self.bytes_up = self.bytes_down = 0

    def upload(self, x: torch.Tensor, reuse: bool = True) -> torch.Tensor:
        """Host x[N,3,H,W] uint8 (0-255) or float ([0,1]) -> float32 pixels [N,3,H,W] in [0,1] on the device.

        ``reuse``: stage through the pinned buffer kept per (shape, dtype); False: a pinned buffer of its
        own, recycled by PyTorch's caching host allocator (one-off shapes: nothing kept per shape).
        """
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise ValueError(f"upload takes uint8 or float pixels, got {x.dtype}; valid: uint8, float32, float64")
        self.bytes_up += x.numel() * x.element_size()
        if self.cuda:
            key = (tuple(x.shape), x.dtype)
            buf, done = self._up.get(key, (None, None)) if reuse else (None, None)
            if buf is None:
                buf = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
            elif done is not None:
                done.synchronize()  # the previous copy out of this buffer has finished (long ago, normally)
            buf.copy_(x)
            with torch.cuda.stream(self.stream):
                dev = buf.to(self.device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.stream)
            if reuse:
                self._up[key] = (buf, done)
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            dev.record_stream(current)  # allocated on the side stream, consumed on the current one
        else:
            dev = x.to(self.device)
            if self.device.type == "meta":
                self._meta_src = {tuple(x.shape): x}
        return dev.float().div_(255.0) if dev.dtype == torch.uint8 else dev.float()

    @staticmethod
    def quantize(pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N,3,H,W] in [0,1] -> uint8, round half up (as imageio.save_image rounds floats)."""
        return (pixels.float().clamp(0.0, 1.0) * 255.0 + 0.5).floor_().to(torch.uint8)

    def download(self, pixels: torch.Tensor, reuse: bool = True) -> Pending:
        """Dreamed pixels [N,3,H,W] in [0,1] on the device -> Pending uint8 host results.

        ``reuse``: through the per-shape ring of pinned buffers (valid until ``depth`` more downloads
        of that shape); False: into a buffer of its own (one-off shapes, no per-shape state).
        """
        n_bytes = pixels.numel()
        self.bytes_down += n_bytes
        if pixels.device.type == "meta":  # a simulated device: nothing to copy; the input stands in for the dream
            src = self._meta_src.get(tuple(pixels.shape))
            if src is None:
                return Pending(torch.zeros(pixels.shape, dtype=torch.uint8))
            return Pending(src if src.dtype == torch.uint8 else self.quantize(src))
        q = self.quantize(pixels)  # [N,3,H,W] uint8, on the device
        if not self.cuda:
            return Pending(q.cpu())
        if not reuse:
            host = torch.empty(q.shape, dtype=torch.uint8, pin_memory=True)
            return Pending(host, self._copy_down(q, host))
        key = tuple(q.shape)
        ring = self._down.setdefault(key, [])
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        if len(ring) < self.depth:
            ring.append((torch.empty(q.shape, dtype=torch.uint8, pin_memory=True), None))
        slot = turn % len(ring)
        host, _ = ring[slot]
        done = self._copy_down(q, host)
        ring[slot] = (host, done)
        return Pending(host, done)

    def _copy_down(self, q: torch.Tensor, host: torch.Tensor):
        """Copy device uint8 q into pinned ``host`` on the download stream once the compute is done; its event."""
        self.down_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.down_stream):
            q.record_stream(self.down_stream)
            host.copy_(q, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.down_stream)
        return done
