"""Dreaming as one Ray Data stage: ``ds.map_batches(DreamStage, ...)`` on an actor pool.

``DreamStage`` is a callable class in the shape of Ray's batch-inference examples: ``__init__``
runs once per actor (config, preflight checks, the output folder's parameter claim, the model
and backend), ``__call__`` runs per batch of rows. A row carries a *path* (a file or an
object-store URL), never pixels: the actor reads its inputs and writes its outputs itself,
atomically and with the job's parameter hash embedded, exactly as ``dreamfleet run`` does, and
returns one small row per input: ``path, output, status, reason`` (plus the input's other
columns). An output that already carries this job's hash is ``skipped``, so a task Ray Data
retries after an actor died, or a rerun of the whole dataset, writes nothing twice. A bad
image is a ``failed`` row with its reason; the dataset goes on.

Output names mirror the input path below ``input_root`` (default: the whole path, its bucket
or top folder included, so two inputs never share an output).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

import numpy as np

from dreamfleet.cluster.commands import CLUSTER_FILE_KEYS, JOB_KEYS
from dreamfleet.cluster.worker import ray_cpus
from dreamfleet.engine.config import DreamConfig, load_toml, make_config, read_toml
from dreamfleet.engine.imageio import ImageLoadError, probe_size
from dreamfleet.engine.inputs import output_path
from dreamfleet.engine.job import check_job_file, output_param_hash, write_job_file
from dreamfleet.engine.models import get_spec
from dreamfleet.engine.octaves import plan_shapes, usable_octaves
from dreamfleet.engine.report import ImageRecord
from dreamfleet.engine.runner import BackendFactory, DreamRunner, WorkItem
from dreamfleet.engine.sizing import working_size
from dreamfleet.engine.storage import URL, Storage, is_url, location

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("path", "output", "status", "reason")


def load_stage_config(config, output=None) -> tuple[DreamConfig, str]:
    """(DreamConfig, output) from a job file path, a dict of options (dashes allowed) or a DreamConfig.

    ``output`` wins over the job file's or dict's ``output`` key; a relative job-file output is
    relative to the job file's folder, as in ``dreamfleet run``.
    """
    skip = JOB_KEYS + CLUSTER_FILE_KEYS
    if isinstance(config, DreamConfig):
        cfg = config
    elif isinstance(config, dict):
        values = {k.replace("-", "_"): v for k, v in config.items()}
        output = output or values.get("output")
        cfg = make_config(None, {k: v for k, v in values.items() if k not in skip})
    elif isinstance(config, (str, Path)):
        raw = read_toml(config)
        if output is None and "output" in raw:
            output = raw["output"] if is_url(raw["output"]) else str(Path(config).parent / location(raw["output"]))
        cfg = make_config(None, {k: v for k, v in load_toml(config).items() if k not in skip})
    else:
        raise TypeError(f"config must be a job file path, a dict or a DreamConfig, got {type(config).__name__}")
    if not output:
        raise ValueError("DreamStage needs an output folder or URL: output=... or an `output` key in the config")
    return cfg, str(output)


def mirror_rel(path: str, root: str | None) -> str:
    """The output-relative name of ``path``: below ``root`` if it lies there, else its whole path."""
    def full(p) -> str:
        loc = location(p)
        return str(loc) if isinstance(loc, URL) else loc.resolve().as_posix()

    if root is not None:
        base = full(root).rstrip("/") + "/"
        if full(path).startswith(base):
            return full(path)[len(base):]
    loc = location(path)
    if isinstance(loc, URL):
        return loc.path  # bucket/key
    return PurePosixPath(full(loc)).relative_to("/").as_posix()


class DreamStage:
    """A Ray Data ``map_batches`` callable: builds the runner once per actor, dreams a batch of paths per call."""

    def __init__(self, config, output: str | None = None, *, input_root: str | None = None, column: str = "path",
                 backend_factory: BackendFactory | None = None) -> None:
        import torch

        from dreamfleet.backends import create_backend, preflight

        self.cfg, out = load_stage_config(config, output)
        preflight(self.cfg)
        self.out, self.root, self.column = location(out), input_root, column
        self.storage = Storage.for_config(self.cfg)
        if not is_url(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
        check_job_file(self.out, self.cfg, self.storage)  # a folder of other parameters is refused, not mixed
        write_job_file(self.out, self.cfg, self.storage)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.runner = DreamRunner(self.cfg, backend_factory or create_backend, worker=f"ray-data:{os.getpid()}",
                                  cpu_budget=ray_cpus())  # decode/write threads from the actor's num_cpus
        self.runner.prepare([])  # the backend is up; shapes are warmed as batches bring them
        self.prepared: set[tuple[int, int, int]] = set()
        self.hash, self.spec = self.cfg.param_hash(), get_spec(self.cfg.model)
        log.info("DreamStage ready on %s (%d io threads), writing to %s", self.runner.device,
                 self.runner.io_threads, self.out)

    def __call__(self, batch) -> dict:
        paths = [str(p) for p in batch[self.column]]
        results = self.dream_paths(paths)
        out = {k: np.asarray(batch[k]) for k in batch if k not in RESULT_COLUMNS}  # the input's other columns
        out["path"] = np.asarray(paths, dtype=object)
        for col in RESULT_COLUMNS[1:]:
            out[col] = np.asarray([r[col] for r in results], dtype=object)
        return out

    def dream_paths(self, paths: list[str]) -> list[dict]:
        """One result row per path, in order: planned (skips, bad inputs), dreamed, written."""
        rows: list[dict | None] = [None] * len(paths)
        items: dict[str, list[int]] = {}  # rel -> row indices (a repeated path is dreamed once)
        todo: list[WorkItem] = []
        planned = self._plan(paths)
        for i, res in enumerate(planned):
            if isinstance(res, WorkItem):
                if res.rel not in items:
                    todo.append(res)
                items.setdefault(res.rel, []).append(i)
            else:
                rows[i] = _row(paths[i], res)
        if todo:
            self._prepare([i.hw for i in todo])
            for rec in self.runner.process(todo):
                for i in items[rec.rel]:
                    rows[i] = _row(paths[i], rec)
        return rows

    def _plan(self, paths: list[str]) -> list:
        """Per path: an ImageRecord (skipped / failed now) or a WorkItem to dream."""
        outs: list = []
        for p in paths:
            try:
                outs.append(output_path(self.out, mirror_rel(p, self.root), self.cfg.output_format))
            except ValueError as exc:
                outs.append(exc)
        existing = self.storage.existing([str(o) for o in outs if not isinstance(o, Exception)])
        return [self._plan_one(p, o, str(o) in existing) for p, o in zip(paths, outs)]

    def _plan_one(self, path: str, out, exists: bool):
        if isinstance(out, Exception):
            return ImageRecord(path, path, "failed", reason=str(out))
        if exists:
            made_with = output_param_hash(out, self.storage)
            if made_with == self.hash:  # done by an earlier attempt or run: never written twice
                return ImageRecord(path, path, "skipped", output=str(out), reason="output exists (this job's hash)")
            if not self.cfg.overwrite:
                return ImageRecord(path, path, "failed", output=str(out),
                                   reason=f"{out} exists, made with other parameters or not by dreamfleet "
                                          f"(hash {made_with}); pass overwrite=true to replace it")
        try:
            w, h = probe_size(path, self.cfg.max_pixels, self.storage)
            hw = working_size(w, h, self.cfg)
            usable_octaves(hw[0], hw[1], self.cfg.octaves, self.cfg.octave_scale, self.spec.min_size)
        except (ImageLoadError, ValueError) as exc:
            return ImageRecord(path, path, "failed", reason=str(exc))
        return WorkItem(path, mirror_rel(path, self.root), str(out), hw)

    def _prepare(self, sizes: list[tuple[int, int]]) -> None:
        """Warm the backend for batch shapes it has not seen yet (compiled backends specialize on them)."""
        cfg = self.cfg
        shapes = plan_shapes(sizes, cfg.batch_size, cfg.octaves, cfg.octave_scale, self.spec.min_size,
                             tile=cfg.tile, tile_overlap=cfg.tile_overlap)
        new = [s for s in shapes if tuple(s) not in self.prepared]
        if new:
            self.runner.prepare(new)
            self.prepared.update(tuple(s) for s in new)

    def close(self) -> None:
        self.runner.close()


def _row(path: str, rec: ImageRecord) -> dict:
    return {"path": path, "output": rec.output, "status": rec.status, "reason": rec.reason}


__all__ = ["DreamStage", "RESULT_COLUMNS", "load_stage_config", "mirror_rel"]
