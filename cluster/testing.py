"""Fault-injecting backend factories for the cluster tests (importable by Ray workers).

They wrap ``dreamfleet.backends.create_backend``; bind their keyword arguments with
``functools.partial`` and pass the result as the backend factory. A *poison* image is a
constant-colour image (zero spread survives resizing and jitter), which is how the
wrapper recognises it inside a batch tensor.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from dreamfleet.engine.atomic import atomic_write
from dreamfleet.engine.backends.base import Backend

log = logging.getLogger(__name__)


def has_poison(x: torch.Tensor) -> bool:
    flat = x.flatten(2)  # [N, C, H*W]: a poison image is flat in every channel
    return bool(((flat.amax(2) - flat.amin(2)) < 1e-5).all(1).any())


class _Wrapped(Backend):
    def __init__(self, inner: Backend, on_step) -> None:
        super().__init__()
        self.inner, self.on_step = inner, on_step
        self.name, self.device, self.dtype = inner.name, inner.device, inner.dtype
        self.steps = 0

    def prepare(self, shapes):
        self.inner.prepare(shapes)

    def step(self, x):
        self.steps += 1
        self.on_step(self, x)
        return self.inner.step(x)

    def close(self):
        self.inner.close()

    def describe(self):
        return self.inner.describe()


def poison_backend(dm, cfg, device, *, crash: bool = False):
    """Raises (or, with ``crash``, kills the worker process) on any batch holding a poison image."""
    from dreamfleet.backends import create_backend

    def on_step(_, x):
        if has_poison(x):
            if crash:
                log.error("poison image: killing worker process %d", os.getpid())
                os._exit(1)
            raise RuntimeError("poison image crashed the model")

    return _Wrapped(create_backend(dm, cfg, device), on_step)


def dying_backend(dm, cfg, device, *, marker: str, out_dir: str, after_steps: int = 2):
    """Kills its process once, at the first step after ``after_steps`` by which an output exists.

    Outputs are written by the runner's writer threads, so the step waits for one to exist
    (at the latest, the next shard's first step: a shard's writes all finish before it returns).
    Before dying it writes to ``marker`` the inode of every output already written, so a
    test can check that none of them was written again.
    """
    from dreamfleet.backends import create_backend
    from dreamfleet.engine.storage import Storage, is_url, location

    def outputs_written() -> dict:
        """Output -> inode (object stores: 0) of every dream already written under ``out_dir``."""
        def ours(name: str) -> bool:
            return name.endswith(".png") and not name.startswith(".") and "dreamfleet" not in name
        if is_url(out_dir):
            return {str(u): 0 for u in Storage.for_config(cfg).find(location(out_dir)) if ours(u.name)}
        return {str(p): p.stat().st_ino for p in Path(out_dir).rglob("*.png") if ours(p.name)}

    def on_step(backend, x):
        if backend.steps > after_steps and not os.path.exists(marker):
            written = outputs_written()
            if not written:
                return  # no output written yet: die at a later step
            atomic_write(marker, json.dumps({"pid": os.getpid(), "written": written}))
            log.error("dying mid-shard on purpose (pid %d, %d outputs written)", os.getpid(), len(written))
            os._exit(1)

    return _Wrapped(create_backend(dm, cfg, device), on_step)


def hanging_backend(dm, cfg, device, *, marker: str):
    """Hangs its worker forever on the first step, once (while ``marker`` does not exist)."""
    from dreamfleet.backends import create_backend

    def on_step(_, x):
        if not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            log.error("hanging on purpose (pid %d)", os.getpid())
            time.sleep(3600)

    return _Wrapped(create_backend(dm, cfg, device), on_step)


def missing_provider_backend(dm, cfg, device, *, count_dir: str | None = None, fail_first: int | None = None):
    """Raises ``MissingProvider`` when built, as ONNX Runtime without its CUDA libraries does (in the actor's
    ``__init__``); with ``count_dir`` and ``fail_first``, only the first ``fail_first`` builds (of any process)."""
    from dreamfleet.backends import create_backend
    from dreamfleet.export.ort_session import MissingProvider

    if count_dir is not None and fail_first is not None:
        n = 0
        while True:  # claim the next build number atomically (O_EXCL), across worker processes
            try:
                os.close(os.open(os.path.join(count_dir, f"build-{n}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                break
            except FileExistsError:
                n += 1
        if n >= fail_first:
            return create_backend(dm, cfg, device)
    raise MissingProvider("ONNX Runtime session asked for CUDAExecutionProvider but runs on CPUExecutionProvider: "
                          "libcudart.so.13, libcublas.so.13 did not load")


def node_has_resource(name: str) -> bool:
    """Whether the Ray node this process runs on declares the custom resource ``name``."""
    import ray

    me = ray.get_runtime_context().get_node_id()
    return any(n["NodeID"] == me and name in n.get("Resources", {}) for n in ray.nodes())


def slow_until_joined_backend(dm, cfg, device, *, marker: str, late_resource: str, seconds: float = 1.0):
    """Sleeps ``seconds`` per step until ``marker`` exists; a worker on the node with ``late_resource`` writes it.

    For the autoscaling test: the first workers stay busy until the late node's worker has run a step,
    so the late node is sure to get work.
    """
    from dreamfleet.backends import create_backend

    late = node_has_resource(late_resource)

    def on_step(_, x):
        if late and not os.path.exists(marker):
            atomic_write(marker, json.dumps({"pid": os.getpid()}))
        elif not os.path.exists(marker):
            time.sleep(seconds)

    return _Wrapped(create_backend(dm, cfg, device), on_step)


class _PrepareChecked(_Wrapped):
    """Raises if ``step`` comes before ``prepare``; records each prepare (pid, shapes) in ``record_dir``."""

    def __init__(self, inner: Backend, record_dir: str, die_marker: str | None, die_after: int) -> None:
        super().__init__(inner, self._check)
        self.record_dir, self.die_marker, self.die_after = record_dir, die_marker, die_after
        self.prepared: list | None = None

    def prepare(self, shapes):
        self.prepared = [list(s) for s in shapes]
        path = Path(self.record_dir) / f"prepare-{os.getpid()}.json"
        path.write_text(json.dumps({"pid": os.getpid(), "shapes": self.prepared}))
        self.inner.prepare(shapes)

    def _check(self, _, x):
        if self.prepared is None:
            raise RuntimeError("step() before prepare(shapes)")
        if self.die_marker and self.steps > self.die_after and not os.path.exists(self.die_marker):
            Path(self.die_marker).write_text(str(os.getpid()))
            log.error("dying after prepare on purpose (pid %d)", os.getpid())
            os._exit(1)


def prepare_checking_backend(dm, cfg, device, *, record_dir: str, die_marker: str | None = None,
                             die_after: int = 2):
    """A real backend that refuses ``step`` before ``prepare``; optionally kills its process once."""
    from dreamfleet.backends import create_backend

    return _PrepareChecked(create_backend(dm, cfg, device), record_dir, die_marker, die_after)


__all__ = ["dying_backend", "hanging_backend", "has_poison", "missing_provider_backend", "poison_backend", "node_has_resource", "prepare_checking_backend",
           "slow_until_joined_backend"]
