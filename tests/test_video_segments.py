"""Long videos split at scene cuts (``--video-split-frames``): the split output equals the unsplit one bit for bit
(fp64), split across two actors in ``run`` equals in-process, a job killed before the assembly finishes it without
dreaming again, and the report has one record per video (tiny clips, random weights)."""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("cv2")

import ray_fixtures  # noqa: E402
from video_fixtures import NTSC, pan_frames, write_clip  # noqa: E402

from dreamfleet.backends import create_backend  # noqa: E402
from dreamfleet.engine.config import make_config  # noqa: E402
from dreamfleet.engine.job import plan_job, run_job  # noqa: E402
from dreamfleet.engine.video.scheduler import VideoScheduler, state_root  # noqa: E402
from dreamfleet.engine.video.segments import plan_spans  # noqa: E402
from dreamfleet.engine.video.store import FrameStore  # noqa: E402

SIZE = (64, 48)  # W, H: the working size as is (max_side 64, snap 16)
FAST = dict(random_weights=True, layer="inception3b", octaves=1, iterations=1, max_side=64, snap=16, jitter=4,
            io_threads=1, precision="fp64", keep_frames=True)
SHOTS = [(4, "coffee.png"), (3, "astronaut.png"), (4, "chelsea.png"), (3, "coffee.png")]
ray_cluster = ray_fixtures.ray_cluster  # the session's two-node cluster


def _cfg(**kw):
    return make_config(overrides=dict(FAST, **kw))


def _shots_clip(path: Path, shots=SHOTS) -> Path:
    """Pans over different photos one after the other: a hard cut between shots, 30000/1001 fps, AAC audio."""
    frames = [f for n, name in shots for f in pan_frames(n, SIZE, 2, name)]
    return write_clip(path, frames, [1001 * t for t in range(len(frames))], Fraction(1, 30000), NTSC, audio="aac")


def _frames(out: Path, cfg, rel: str) -> list[np.ndarray]:
    """Every dreamed frame a job kept (--keep-frames), whole or in segments, in frame order."""
    root = state_root(out, cfg.param_hash(), rel)
    stores = [root] + sorted(root.glob("seg-*"))
    found = sorted((f[0], f[-1]) for s in stores for f in FrameStore(s).frames())
    return [FrameStore.read(p) for _, p in found]


def _decode(path: Path) -> tuple[list[int], list[bytes]]:
    with av.open(str(path)) as c:
        pts = [f.pts for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = [bytes(p) for p in c.demux(audio=0) if p.size]
    return pts, audio


def test_spans_start_on_confirmed_cuts_and_never_split_a_shot():
    yes = {10, 25, 60}.__contains__
    assert plan_spans(0, 100, 30, [10, 25, 40, 60], yes) == [(0, 25), (25, 60), (60, None)]  # 40: not confirmed
    assert plan_spans(0, 100, 30, [70], yes) == [(0, None)]  # the only candidate fails: whole
    assert plan_spans(0, 100, 30, [60], yes) == [(0, 60), (60, None)]  # no cut within 30: a longer segment
    assert plan_spans(5, 20, 30, [10], yes) == [(5, None)]  # short enough: one span


def test_split_video_equals_the_unsplit_one_bit_for_bit(tmp_path):
    clip = _shots_clip(tmp_path / "clip.mp4")
    whole = run_job(_cfg(video_split_frames=0), [str(clip)], tmp_path / "whole", create_backend, progress=False)
    cfg = _cfg(video_split_frames=4)
    assert cfg.param_hash() == _cfg(video_split_frames=0).param_hash()  # the output does not depend on it
    todo = plan_job(cfg, [str(clip)], tmp_path / "plan").todo
    assert [(i.span, i.part, i.parts) for i in todo] == [((0, 4), 0, 4), ((4, 7), 1, 4), ((7, 11), 2, 4),
                                                        ((11, None), 3, 4)]
    split = run_job(cfg, [str(clip)], tmp_path / "split", create_backend, progress=False)
    [a], [b] = whole.records, split.records  # one record per video, not per segment
    assert a.status == b.status == "done"
    assert b.video["segments"] == [[0, 4], [4, 7], [7, 11], [11, None]]
    assert b.video["frames_per_s"] > 0 and b.video["parts"] == 4 and b.video["frames_dreamed_now"] == 14
    assert b.video["frames"] == a.video["frames"] == 14 and b.video["cuts"] == a.video["cuts"] == 3
    x, y = _frames(tmp_path / "whole", cfg, "clip.mp4"), _frames(tmp_path / "split", cfg, "clip.mp4")
    assert len(x) == len(y) == 14 and all(np.array_equal(p, q) for p, q in zip(x, y))
    assert _decode(Path(a.output)) == _decode(Path(b.output))  # same pts, audio copied packet for packet
    assert _decode(clip)[1] == _decode(Path(b.output))[1]


def test_a_failing_split_plan_dreams_the_video_whole(tmp_path, monkeypatch):
    from dreamfleet.engine.video import segments

    def broken(*args, **kwargs):
        raise OSError("cut scan failed")

    monkeypatch.setattr(segments, "_make_plan", broken)
    clip = _shots_clip(tmp_path / "clip.mp4")
    [item] = plan_job(_cfg(video_split_frames=4), [str(clip)], tmp_path / "plan").todo  # splitting is optional
    assert item.span is None and item.parts == 0 and item.frames == 14


def test_independent_frames_split_anywhere(tmp_path):
    clip = _shots_clip(tmp_path / "clip.mp4", [(7, "coffee.png")])
    cfg = _cfg(video_split_frames=3, video_flow="none")
    todo = plan_job(cfg, [str(clip)], tmp_path / "plan").todo
    assert [i.span for i in todo] == [(0, 3), (3, 6), (6, None)]  # no chain: plain chunks, no scan
    run_job(cfg, [str(clip)], tmp_path / "split", create_backend, progress=False)
    run_job(_cfg(video_flow="none"), [str(clip)], tmp_path / "whole", create_backend, progress=False)
    x, y = _frames(tmp_path / "whole", cfg, "clip.mp4"), _frames(tmp_path / "split", cfg, "clip.mp4")
    assert len(x) == len(y) == 7 and all(np.array_equal(p, q) for p, q in zip(x, y))


def test_a_job_killed_before_the_assembly_finishes_it_without_dreaming_again(tmp_path, monkeypatch):
    import dreamfleet.engine.video.assemble as assemble_mod

    clip = _shots_clip(tmp_path / "clip.mp4")
    cfg = _cfg(video_split_frames=4, keep_frames=False)
    real = assemble_mod.assemble

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a SIGKILL after every segment is on disk, before the video is written

    monkeypatch.setattr(assemble_mod, "assemble", killed)
    with pytest.raises(KeyboardInterrupt):
        run_job(cfg, [str(clip)], tmp_path / "out", create_backend, progress=False)
    assert not (tmp_path / "out" / "clip.mp4").exists()
    monkeypatch.setattr(assemble_mod, "assemble", real)
    opened = []
    real_open = VideoScheduler._open
    monkeypatch.setattr(VideoScheduler, "_open", lambda self, item: (opened.append(item), real_open(self, item))[1])
    rep = run_job(cfg, [str(clip)], tmp_path / "out", create_backend, progress=False)
    [rec] = rep.records
    assert rec.status == "done" and opened == []  # every segment reported from its marker: nothing dreamed
    assert rec.video["frames"] == 14 and rec.video["frames_dreamed_now"] == 0 and rec.video["resumed_at"] == 14
    assert len(_decode(Path(rec.output))[0]) == 14
    assert not state_root(tmp_path / "out", cfg.param_hash(), "clip.mp4").exists()  # frames removed after
    again = run_job(cfg, [str(clip)], tmp_path / "out", create_backend, progress=False)
    assert [r.status for r in again.records] == ["skipped"]


def test_the_driver_queues_one_assembly_once_every_segment_reported():
    from dreamfleet.cluster.segments import SegmentBook, for_cluster, item_for, manifest_items
    from dreamfleet.engine.report import ImageRecord
    from dreamfleet.engine.runner import WorkItem

    whole = WorkItem("in/v.mp4", "v.mp4", "out/v.mp4", (48, 64), kind="video", frames=10)
    segs = [dataclasses.replace(whole, span=s, part=k, parts=3, frames=n)
            for k, (s, n) in enumerate([((0, 4), 4), ((4, 7), 3), ((7, None), 3)])]

    def rec(k, status="done", **video):
        return ImageRecord("in/v.mp4", "v.mp4", status, retryable=status == "failed",
                           video=dict(segment=list(segs[k].span), part=k, parts=3, **video))

    book = SegmentBook()
    assert book.note(rec(0), segs[:1]) == (True, []) and book.note(rec(1), segs[1:2]) == (True, [])
    consumed, follow = book.note(rec(2), segs[2:])
    assert consumed and [(i.span, i.parts, i.frames) for i in follow] == [(None, 3, 0)]  # the assembly item
    assert book.note(rec(2), segs[2:]) == (True, [])  # reported again (a retry): queued once
    other = SegmentBook()  # a worker held all three: part 1 failed, part 0 done, part 2 never ended
    consumed, again = other.note(rec(1, "failed", parts_done=[0]), segs)
    assert not consumed and again == [segs[2]] and item_for(rec(1, "failed"), segs) == segs[1]
    video_failure = ImageRecord("in/v.mp4", "v.mp4", "failed", retryable=True)  # the local assembly failed
    assert item_for(video_failure, segs).span is None
    assert item_for(ImageRecord("in/w.mp4", "w.mp4", "failed", retryable=True), segs) is None  # not this shard's
    assert "v.mp4" not in book.done  # nothing per video is kept once its assembly is queued
    assert list(manifest_items(segs)) == segs[:1]
    on_s3 = [dataclasses.replace(s, output="s3://b/out/v.mp4") for s in segs]
    assert for_cluster(on_s3, 1) == on_s3  # one node: segments meet in its temporary folder
    assert [(i.span, i.parts, i.frames) for i in for_cluster(on_s3, 2)] == [(None, 0, 10)]  # several: whole


def test_bad_split_value_exits_2_naming_it(tmp_path, capsys):
    from dreamfleet.cli import main

    assert main(["dream", str(tmp_path / "x.mp4"), "-o", str(tmp_path / "o"), "--video-split-frames", "-1"]) == 2
    assert "video_split_frames" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_run_splits_a_long_video_across_two_actors_like_the_local_job(ray_cluster, tmp_path):
    from dreamfleet.cluster.driver import ClusterOptions, run_cluster_job

    (tmp_path / "in").mkdir()
    clip = _shots_clip(tmp_path / "in" / "long.mp4")
    inputs = [str(tmp_path / "in")]
    cfg = _cfg(video_split_frames=4, batch_size=2)
    res = run_cluster_job(cfg, inputs, tmp_path / "out", create_backend, ClusterOptions(workers=2, gpus_per_worker=0))
    assert res.exit_code == 0 and res.reconciliation["ok"]
    [rec] = res.report.records  # one record for the video, however many segments and actors
    assert rec.status == "done" and rec.video["frames"] == 14 and len(rec.video["segments"]) == 4
    assert len(set(rec.video["segment_workers"])) == 2, rec.video["segment_workers"]  # both actors dreamed
    assert _decode(Path(rec.output))[0] == _decode(clip)[0]
    local = run_job(cfg, inputs, tmp_path / "local", create_backend, progress=False)
    assert [r.status for r in local.records] == ["done"]
    x, y = _frames(tmp_path / "out", cfg, "long.mp4"), _frames(tmp_path / "local", cfg, "long.mp4")
    assert len(x) == len(y) == 14 and all(np.array_equal(p, q) for p, q in zip(x, y))


def test_an_object_store_output_splits_in_one_process(tmp_path):
    """Segment state of an object-store output lives in the local temporary folder; one process joins it."""
    import fsspec

    from dreamfleet.engine.storage import location

    clip = _shots_clip(tmp_path / "clip.mp4")
    out = f"memory://dreamfleet-seg-{tmp_path.name}/out"
    cfg = _cfg(video_split_frames=4)
    rep = run_job(cfg, [str(clip)], out, create_backend, progress=False)
    [rec] = rep.records
    assert rec.status == "done" and len(rec.video["segments"]) == 4
    fs = fsspec.filesystem("memory")
    try:
        (tmp_path / "got.mp4").write_bytes(fs.cat(f"/dreamfleet-seg-{tmp_path.name}/out/clip.mp4"))
        assert _decode(tmp_path / "got.mp4")[0] == _decode(clip)[0]
        run_job(cfg, [str(clip)], tmp_path / "local", create_backend, progress=False)
        x, y = _frames(location(out), cfg, "clip.mp4"), _frames(tmp_path / "local", cfg, "clip.mp4")
        assert len(x) == len(y) == 14 and all(np.array_equal(p, q) for p, q in zip(x, y))
    finally:
        fs.rm(f"/dreamfleet-seg-{tmp_path.name}", recursive=True)
        import shutil

        shutil.rmtree(state_root(location(out), cfg.param_hash(), "clip.mp4"), ignore_errors=True)
