"""An actor's start error (its exception type and message) reaches the user: the exit-2 line when every worker
failed to start, the log when only some did. Real local Ray (``ray_fixtures``) and a backend that raises
``MissingProvider`` when built, as ONNX Runtime without its CUDA libraries does."""
from __future__ import annotations

import functools
import logging

import pytest
import ray_fixtures
from ray_fixtures import make_images, tiny_config

from dreamfleet.cluster import testing
from dreamfleet.cluster.driver import ClusterOptions, run_cluster_job
from dreamfleet.cluster.start_errors import StartErrors, start_error
from dreamfleet.export.ort_session import MissingProvider

ray_cluster = ray_fixtures.ray_cluster  # the session's two-node cluster
LIBS = "libcudart.so.13, libcublas.so.13"


class _TaskError(Exception):  # the shape of ray.exceptions.RayTaskError: the user's exception as ``cause``
    def __init__(self, cause):
        super().__init__("Traceback ...\nstuff")
        self.cause = cause


class _ActorDied(Exception):  # the shape of ActorDiedError from a failed __init__
    actor_init_failed = True


class _RayText(Exception):  # a Ray error whose cause did not survive: only its text
    pass


_RayText.__module__ = "ray.exceptions"


def test_start_error_digs_out_the_cause():
    inner = MissingProvider(f"asked for CUDA but runs on CPU: {LIBS} did not load")
    assert start_error(_ActorDied(_TaskError(inner))) == f"MissingProvider: asked for CUDA but runs on CPU: {LIBS} did not load"
    assert start_error(_TaskError(FileNotFoundError("weights.pt"))) == "FileNotFoundError: weights.pt"
    text = _RayText("The actor died because of an error raised in its creation task\n  File x\n"
                     "\x1b[36mdreamfleet.export.ort_session.MissingProvider: no CUDA\x1b[39m")
    assert start_error(text) == "MissingProvider: no CUDA"  # the cause did not unpickle: the traceback's last line
    errors = StartErrors()
    errors.add("w0", "MissingProvider: no CUDA")
    errors.add("w1", "MissingProvider: no CUDA")
    assert errors.all_failed_message() == "every worker failed to start: MissingProvider: no CUDA (w0, w1)"
    assert "see the log" in StartErrors().all_failed_message()


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_every_worker_failed_to_start_names_the_error(ray_cluster, tmp_path):
    make_images(tmp_path / "in", 2)
    opts = ClusterOptions(workers=2, retries=0)
    with pytest.raises(RuntimeError) as err:
        run_cluster_job(tiny_config(), [str(tmp_path / "in")], tmp_path / "out", testing.missing_provider_backend, opts)
    line = str(err.value)
    assert line.startswith("every worker failed to start: MissingProvider: ") and LIBS in line, line
    assert "(w0, w1)" in line and "\n" not in line


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_some_workers_failed_to_start_logs_the_error(ray_cluster, tmp_path, caplog):
    make_images(tmp_path / "in", 4)
    (tmp_path / "count").mkdir()
    factory = functools.partial(testing.missing_provider_backend, count_dir=str(tmp_path / "count"), fail_first=1)
    opts = ClusterOptions(workers=1, retries=0, shard_size=2)
    with caplog.at_level(logging.WARNING, logger="dreamfleet.cluster.pool"):
        res = run_cluster_job(tiny_config(), [str(tmp_path / "in")], tmp_path / "out", factory, opts)
    assert res.exit_code == 0 and res.report.counts()["done"] == 4
    failed = [r.getMessage() for r in caplog.records if "failed to start" in r.getMessage()]
    assert failed and "MissingProvider: " in failed[0] and LIBS in failed[0], failed
