"""engine/atomic.py: one atomic write for every file dreamfleet writes, and one cleanup for all leftovers."""
from __future__ import annotations

import numpy as np
import pytest
from ray_fixtures import make_images, tiny_config

from dreamfleet.cluster.contact_sheet import make_contact_sheet
from dreamfleet.cluster.manifest import build_manifest, content_hash
from dreamfleet.engine import atomic
from dreamfleet.engine.atomic import TMP_SUFFIX, atomic_write, clean_stale_temporaries, file_digest
from dreamfleet.engine.imageio import save_image
from dreamfleet.engine.job import plan_job, write_job_file
from dreamfleet.engine.report import ImageRecord, RunReport


def test_atomic_write_leaves_old_file_when_verify_fails(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, b"old")
    with pytest.raises(ValueError, match="bad"):
        atomic_write(target, "new", verify=lambda tmp: (_ for _ in ()).throw(ValueError("bad")))
    assert target.read_bytes() == b"old" and list(tmp_path.rglob(f"*{TMP_SUFFIX}")) == []
    atomic_write(target, lambda fh: fh.write(b"written"), fsync=False)
    assert target.read_bytes() == b"written"


def test_file_digest_keeps_the_manifest_format(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert file_digest(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_hash(f) == file_digest(f, "blake2b", digest_size=16) and len(content_hash(f)) == 32


def test_leftovers_of_every_writer_are_cleaned(tmp_path, monkeypatch):
    """Each writer's temporary, as a killed run would leave it, is removed by the one cleanup."""
    names = []
    real = atomic.temporary_for
    monkeypatch.setattr(atomic, "temporary_for", lambda p: names.append(real(p)) or names[-1])
    make_images(tmp_path / "in", 2)
    cfg, out = tiny_config(), tmp_path / "out"
    plan = plan_job(cfg, [str(tmp_path / "in")], out)
    write_job_file(out, cfg)  # job.json
    build_manifest(plan, out, cfg.param_hash())  # the manifest
    item = plan.todo[0]
    save_image(out / item.rel, np.full((64, 64, 3), 0.5, np.float32), None, {})  # a dream
    rec = ImageRecord(item.path, item.rel, "done", output=str(out / item.rel))
    make_contact_sheet([rec], out / "dreamfleet-contact-sheet.png")  # the contact sheet
    report = RunReport({}, out)
    report.add(rec)
    report.write()  # the report
    written = {p.name.split(".")[1] for p in names}
    assert {"job", "manifest", "dreamfleet-report", "dreamfleet-contact-sheet", item.rel.split(".")[0]} <= written
    for tmp in names:  # what a kill between write and rename leaves
        tmp.write_bytes(b"half")
    assert clean_stale_temporaries(out) == len(names)
    assert not any(t.exists() for t in names)
