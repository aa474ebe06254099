"""DreamStage on the real Ray Data executor (local two-node Ray with fake GPUs): rows, exactly-once, resume."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import ray_fixtures
from ray_fixtures import make_images, tiny_config

from dreamfleet.cluster import testing
from dreamfleet.engine.atomic import TMP_SUFFIX

pytestmark = pytest.mark.ray
ray_cluster = ray_fixtures.ray_cluster  # the session's two-node cluster


def _dataset(folder: Path):
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    paths = sorted(str(p) for p in folder.iterdir())
    return ray.data.from_items([{"path": p, "id": i} for i, p in enumerate(paths)])


def _dream(ds, out: Path, root: Path, **kw):
    from dreamfleet.ray_data import DreamStage

    kwargs = {"config": tiny_config(device="cpu"), "output": str(out), "input_root": str(root), **kw}
    return ds.map_batches(DreamStage, fn_constructor_kwargs=kwargs, batch_size=4, num_gpus=1, num_cpus=0.25,
                          concurrency=2).take_all()


def _outputs(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in out.rglob("img*.png")}


@pytest.mark.timeout(240)
def test_dream_stage_rows_then_rerun_skips(ray_cluster, tmp_path):
    make_images(tmp_path / "in", 23)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    rows = _dream(_dataset(tmp_path / "in"), out, tmp_path / "in")
    assert len(rows) == 24 and len({r["path"] for r in rows}) == 24
    by_status = {s: [r for r in rows if r["status"] == s] for s in ("done", "skipped", "failed")}
    assert (len(by_status["done"]), len(by_status["failed"])) == (23, 1)
    bad = by_status["failed"][0]
    assert bad["path"].endswith("broken.png") and bad["reason"] and bad["output"] is None
    order = sorted(str(p) for p in (tmp_path / "in").iterdir())
    assert all(order[r["id"]] == r["path"] for r in rows)  # the input's other columns pass through
    written = _outputs(out)
    assert len(written) == 23 and sorted(Path(r["output"]).name for r in by_status["done"]) == sorted(written)
    assert not list(out.rglob(f"*{TMP_SUFFIX}"))
    meta = json.loads((out / ".dreamfleet" / "job.json").read_text())
    assert meta["param_hash"] == tiny_config().param_hash()  # the folder is claimed as `run` claims it
    again = _dream(_dataset(tmp_path / "in"), out, tmp_path / "in")
    assert sorted(r["status"] for r in again) == ["failed"] + ["skipped"] * 23
    assert _outputs(out) == written  # nothing written again: same files, same inodes


@pytest.mark.timeout(240)
def test_dream_stage_actor_killed_mid_batch_writes_nothing_twice(ray_cluster, tmp_path):
    make_images(tmp_path / "in", 8)
    out, marker = tmp_path / "out", tmp_path / "died.json"
    factory = functools.partial(testing.dying_backend, marker=str(marker), out_dir=str(out), after_steps=2)
    rows = _dream(_dataset(tmp_path / "in"), out, tmp_path / "in", backend_factory=factory)
    assert marker.exists()  # an actor died mid-batch; Ray Data restarted it and retried the batch
    assert len(rows) == 8 and {r["status"] for r in rows} <= {"done", "skipped"}  # skipped: written by the dead try
    before = json.loads(marker.read_text())["written"]
    after = {str(p): p.stat().st_ino for p in out.rglob("img*.png")}
    assert len(after) == 8 and all(after[p] == ino for p, ino in before.items())  # never rewritten
