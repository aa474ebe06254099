"""dreamfleet: DeepDream as a high-throughput batch service.

The public API: ``dream_folder`` runs a job in-process; ``DreamConfig`` / ``make_config``
describe it. The engine lives in ``dreamfleet.engine``, the ONNX export in
``dreamfleet.export``, Ray workers in ``dreamfleet.cluster``, benchmarks in ``dreamfleet.benchmarks``.
"""
from __future__ import annotations

from dreamfleet.engine.version import dreamfleet_version

__version__ = dreamfleet_version()  # pyproject.toml, via the package metadata (engine/version.py)


def dream_folder(inputs, output, **params):
    """Dream ``inputs`` (paths, folders, globs) into ``output``; ``params`` are DreamConfig fields (``preset=`` too)."""
    from dreamfleet.backends import create_backend, preflight
    from dreamfleet.engine.config import make_config
    from dreamfleet.engine.job import run_job
    from dreamfleet.engine.preflight import check_inputs_exist

    cfg = make_config(params.pop("preset", None), overrides=params)
    inputs = [str(i) for i in ([inputs] if isinstance(inputs, str) else inputs)]
    check_inputs_exist(inputs)
    preflight(cfg)
    return run_job(cfg, inputs, output, create_backend, progress=False)


__all__ = ["__version__", "dream_folder"]
