"""The image buckets: same-shape images dreamed ``batch_size`` at a time, two batches in flight.

An overlapped pipeline (``engine.pipeline``) on the device loop (``engine.device_loop``):
decode threads load and resize the next batches (``DeviceLoop.load_input``), the calling
thread only steps the device, and writer threads encode and write finished images
(``DeviceLoop.write_output``). Both are bounded; records are emitted on the calling thread,
in order, once an image is written. Two batches are in flight on the device: the host
collects and queues batch k+1 (steps, copy to the host, ``Backend.fence``), then waits on
batch k's fence (the one wait per batch) and hands k's images to the writers, so the device
already has k+1 when k finishes.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

from .device_loop import DeviceLoop, WorkItem
from .pipeline import Window
from .report import ImageRecord
from .writeguard import not_attempted


class BucketScheduler:
    """Dreams images that fit the device untiled, bucket by working shape; ``emit`` gets one record each."""

    def __init__(self, loop: DeviceLoop, emit: Callable[[ImageRecord], None]) -> None:
        self.loop, self.emit, self.cfg = loop, emit, loop.cfg

    def run(self, items: list[WorkItem]) -> None:
        loop, emit, cfg = self.loop, self.emit, self.cfg
        buckets: dict[tuple[int, int], list[WorkItem]] = defaultdict(list)
        for item in items:
            buckets[tuple(item.hw)].append(item)
        order = [item for _, bucket in sorted(buckets.items()) for item in bucket]
        decode_pool, _ = loop.pools()
        lanes = max(1, loop.io_threads)
        decoded = Window(3 * cfg.batch_size + lanes)  # decode runs up to three batches ahead
        writes = Window(2 * cfg.batch_size + lanes)  # finished images waiting for a writer
        submitted, current = 0, None  # current: the batch on the device

        def refill() -> None:
            nonlocal submitted
            while submitted < len(order) and not decoded.full() and not loop.storage.cause:
                decoded.push(decode_pool.submit(loop.load_input, order[submitted]), order[submitted])
                submitted += 1

        try:
            refill()
            while len(decoded) and not loop.storage.cause:
                hw = tuple(decoded.futures[0][0].hw)
                size = min(cfg.batch_size, loop.batch_limit.get(hw, cfg.batch_size))
                batch = []
                while len(decoded) and len(batch) < size and tuple(decoded.futures[0][0].hw) == hw:
                    batch.append(decoded.futures.popleft())
                    refill()  # keep the decode threads busy while this batch dreams
                nxt = loop._collect(batch, emit)  # host work while the device runs ``current``
                if nxt is None:
                    continue
                loop._launch(nxt)  # queued behind ``current``: the device never runs dry while we wait
                if current:
                    loop._queue_writes(current, loop._land(current), emit, writes)
                current = nxt
            if current:
                loop._queue_writes(current, loop._land(current), emit, writes)
        finally:
            while len(writes):  # every queued write finishes (or fails) and is recorded
                emit(writes.pop()[1])
        if loop.storage.cause:  # stopped by a persistent write error: decoded ahead or never submitted
            for item in [item for item, _ in decoded.futures] + order[submitted:]:
                emit(not_attempted(item.path, item.rel, loop.storage.reason, loop.worker, item.hw))
            decoded.futures.clear()
