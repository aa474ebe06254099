"""Video dreaming: lockstep == alone, resume == uninterrupted, less flicker than independent frames,
broken files, and timing / frame count / audio kept end to end (tiny clips, random weights)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
pytest.importorskip("cv2")

from video_fixtures import NTSC, pan_clip, pan_frames, write_clip  # noqa: E402

from dreamfleet.backends import create_backend  # noqa: E402
from dreamfleet.engine.config import make_config  # noqa: E402
from dreamfleet.engine.job import run_job  # noqa: E402
from dreamfleet.engine.video import store as store_mod  # noqa: E402
from dreamfleet.engine.video.coherence import carried, hold, initial_frames, sequence_flicker, warp  # noqa: E402
from dreamfleet.engine.video.flow import warp_np  # noqa: E402
from dreamfleet.engine.video.scheduler import VideoScheduler, state_root  # noqa: E402
from dreamfleet.engine.video.store import FrameStore  # noqa: E402

SIZE = (64, 48)  # W, H of the test clips: the working size as is (max_side 64, snap 16)
FAST = dict(random_weights=True, layer="inception3b", octaves=1, iterations=2, max_side=64, snap=16, jitter=4,
            io_threads=1)


def _cfg(**kw):
    return make_config(overrides=dict(FAST, **kw))


def _clip(path: Path, n: int, step: int = 2, name: str = "coffee.png") -> Path:
    return write_clip(path, pan_frames(n, SIZE, step, name), [1001 * t for t in range(n)], Fraction(1, 30000), NTSC)


def _frames(out: Path, cfg, rel: str) -> list[np.ndarray]:
    """The dreamed frames a job kept (--keep-frames), in order, uint8 [H,W,3]."""
    store = FrameStore(state_root(out, cfg.param_hash(), rel))
    return [store.read(f[-1]) for f in store.frames()]


def _decode(path: Path) -> tuple[list[np.ndarray], list[int]]:
    with av.open(str(path)) as c:
        frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    return [f for _, f in frames], [p for p, _ in frames]


def _stopped(monkeypatch, after: int):
    """Make the next job stop (as if killed) once ``after`` rounds have landed; returns the undo."""
    real, landed = VideoScheduler._land, []

    def stop(self, r):
        real(self, r)
        landed.append(r)
        if len(landed) == after:
            raise KeyboardInterrupt

    monkeypatch.setattr(VideoScheduler, "_land", stop)
    return lambda: monkeypatch.setattr(VideoScheduler, "_land", real)


def test_device_warp_matches_the_numpy_reference():
    rng = np.random.default_rng(0)
    img = rng.random((20, 30, 3), dtype=np.float32)
    flow = rng.normal(0, 2.0, (20, 30, 2)).astype(np.float32)
    ours = warp(torch.from_numpy(img).permute(2, 0, 1)[None], torch.from_numpy(flow)[None])[0].permute(1, 2, 0)
    assert np.abs(ours.numpy() - warp_np(img, flow)).max() < 1e-4


def test_initial_frames_carry_only_reliable_detail_and_restart_on_cuts():
    src, prev_src = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    prev_dream = (prev_src + 0.2).clamp(0, 1)
    flow, reliable = torch.zeros(2, 8, 8, 2), torch.ones(2, 8, 8, dtype=torch.bool)
    reliable[0, :4] = False
    init = initial_frames(src, prev_src, prev_dream, flow, reliable, torch.tensor([True, False]), 0.5)
    assert torch.equal(init[1], src[1])  # no carry (first frame, cut, --video-flow none): the fresh frame
    assert torch.equal(init[0, :, :4], src[0, :, :4])  # unreliable pixels: the fresh frame
    expect = (src[0, :, 4:] + 0.5 * (prev_dream - prev_src)[0, :, 4:]).clamp(0, 1)
    assert torch.allclose(init[0, :, 4:], expect)
    dream = torch.rand(2, 3, 8, 8)  # after the ascent: carried pixels go half way back to the warped previous dream
    held = hold(dream, src, *carried(src, prev_src, prev_dream, flow, reliable, torch.tensor([True, False])), 0.5)
    assert torch.equal(held[1], dream[1]) and torch.equal(held[0, :, :4], dream[0, :, :4])
    target = (src[0, :, 4:] + (prev_dream - prev_src)[0, :, 4:]).clamp(0, 1)
    assert torch.allclose(held[0, :, 4:], 0.5 * (dream[0, :, 4:] + target))


def test_lockstep_videos_equal_each_video_alone_fp64(tmp_path, monkeypatch):
    """Frame t of three videos (different lengths: a slot refills) in one batch == each video dreamed alone.

    Two groups in flight (ping-pong, as on a GPU): v0 and v2 share group A's batches, v1 runs in group B."""
    from dreamfleet.engine.job import plan_job
    from dreamfleet.engine.runner import DreamRunner

    clips = [_clip(tmp_path / f"v{i}.mp4", n, step=1 + i, name=name)
             for i, (n, name) in enumerate([(4, "coffee.png"), (2, "astronaut.png"), (3, "chelsea.png")])]
    cfg = _cfg(precision="fp64", batch_size=2, keep_frames=True, iterations=1)
    monkeypatch.setattr(VideoScheduler, "CPU_GROUPS", 2)
    runner = DreamRunner(cfg, create_backend)  # one model: the runs differ only in which videos share a batch
    try:
        recs = runner.process(plan_job(cfg, [str(c) for c in clips], tmp_path / "together").todo)
        assert [r.status for r in recs] == ["done"] * 3
        for i, clip in enumerate(clips):
            runner.process(plan_job(cfg, [str(clip)], tmp_path / f"alone{i}").todo)
            a, b = _frames(tmp_path / "together", cfg, clip.name), _frames(tmp_path / f"alone{i}", cfg, clip.name)
            assert len(a) == len(b) == [4, 2, 3][i]
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
    finally:
        runner.close()


def test_a_job_stopped_mid_video_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "CHAIN_EVERY", 3)  # a checkpoint after frames 2 and 5
    clip = _clip(tmp_path / "clip.mp4", 6)
    cfg = _cfg(keep_frames=True, iterations=1)
    run_job(cfg, [str(clip)], tmp_path / "whole", create_backend, progress=False)
    undo = _stopped(monkeypatch, 3)  # as a killed job: frames 0-2 and the chain after frame 2 are on disk
    with pytest.raises(KeyboardInterrupt):
        run_job(cfg, [str(clip)], tmp_path / "resumed", create_backend, progress=False)
    undo()
    assert not (tmp_path / "resumed" / "clip.mp4").exists() and len(_frames(tmp_path / "resumed", cfg, "clip.mp4")) >= 3
    rep = run_job(cfg, [str(clip)], tmp_path / "resumed", create_backend, progress=False)
    rec = rep.records[0]
    assert rec.status == "done" and rec.video["resumed_at"] == 3 and rec.video["frames_dreamed_now"] == 3
    a, b = _frames(tmp_path / "whole", cfg, "clip.mp4"), _frames(tmp_path / "resumed", cfg, "clip.mp4")
    assert len(a) == len(b) == 6
    worst = max(np.abs(x.astype(float) - y).mean() for x, y in zip(a, b))
    assert worst <= 3.0, worst  # the bound (mean levels); the CPU run is in fact identical
    assert rep.records[0].video["frames"] == 6


def test_a_job_killed_between_checkpoints_redoes_the_frames_after_the_last_one(tmp_path, monkeypatch):
    """Chain state every 3 frames: killed with frames 0-4 on disk, the rerun resumes after the checkpoint at frame 2
    (frames 3 and 4 are dreamed again) and equals the uninterrupted run exactly."""
    monkeypatch.setattr(store_mod, "CHAIN_EVERY", 3)
    clip = _clip(tmp_path / "clip.mp4", 8)
    cfg = _cfg(keep_frames=True, iterations=1)
    run_job(cfg, [str(clip)], tmp_path / "whole", create_backend, progress=False)
    undo = _stopped(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        run_job(cfg, [str(clip)], tmp_path / "resumed", create_backend, progress=False)
    undo()
    store = FrameStore(state_root(tmp_path / "resumed", cfg.param_hash(), "clip.mp4"))
    assert [f[0] for f in store.frames()] == [0, 1, 2, 3, 4] and store.resume_point(0)[0] == 3
    rec = run_job(cfg, [str(clip)], tmp_path / "resumed", create_backend, progress=False).records[0]
    assert rec.status == "done" and rec.video["resumed_at"] == 3 and rec.video["frames_dreamed_now"] == 5
    a, b = _frames(tmp_path / "whole", cfg, "clip.mp4"), _frames(tmp_path / "resumed", cfg, "clip.mp4")
    assert len(a) == len(b) == 8 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_job_killed_before_the_encode_dreams_no_frame_again(tmp_path, monkeypatch):
    """The chain state after a video's last frame (7 frames: not a multiple of CHAIN_EVERY) is stored when its
    lane ends, so a kill between the last frame and the encode costs only the encode."""
    from dreamfleet.engine.video import scheduler

    clip = _clip(tmp_path / "clip.mp4", 7)
    cfg = _cfg(keep_frames=True, iterations=1)
    run_job(cfg, [str(clip)], tmp_path / "whole", create_backend, progress=False)

    def killed(lane, *args):
        for f in lane.writes:
            f.result()
        raise KeyboardInterrupt

    monkeypatch.setattr(scheduler, "finish_any", killed)
    with pytest.raises(KeyboardInterrupt):
        run_job(cfg, [str(clip)], tmp_path / "resumed", create_backend, progress=False)
    monkeypatch.undo()
    rec = run_job(cfg, [str(clip)], tmp_path / "resumed", create_backend, progress=False).records[0]
    assert rec.status == "done" and rec.video["resumed_at"] == 7 and rec.video["frames_dreamed_now"] == 0
    a, b = _frames(tmp_path / "whole", cfg, "clip.mp4"), _frames(tmp_path / "resumed", cfg, "clip.mp4")
    assert len(a) == len(b) == 7 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len(_decode(Path(rec.output))[0]) == 7


def test_a_checkpoint_makes_the_frames_below_it_durable_first(tmp_path, monkeypatch):
    """Frames are renamed into place without fsync; a checkpoint fsyncs them and the folder before its chain state
    (so after a power loss a surviving chain state has all its frames), and replaces the older state."""
    synced = []
    monkeypatch.setattr(store_mod, "_fsync", lambda p: synced.append(Path(p).name))
    store = FrameStore(tmp_path / "v")
    rgb, chain = np.zeros((4, 6, 3), np.uint8), np.zeros((3, 4, 6), np.float32)
    for t in range(3):
        store.save(t, 1001 * t, 1001, rgb)
    assert synced == []
    store.save(3, 3003, 1001, rgb, chain)
    assert synced == [f"{t:06d}.{1001 * t}.1001.png" for t in range(4)] + ["v", "v"]
    store.save(4, 4004, 1001, rgb, chain + 1)
    assert sorted(p.name for p in (tmp_path / "v").glob("chain.*")) == ["chain.000004.npy"]
    assert store_mod.checkpoint_due(store_mod.CHAIN_EVERY - 1) and not store_mod.checkpoint_due(store_mod.CHAIN_EVERY)


def test_resume_point_needs_a_chain_state_with_all_its_frames(tmp_path):
    """What a SIGKILL can leave: a frame without its chain state, a chain state older than the last frame."""
    store = FrameStore(tmp_path / "v")
    rgb, chain = np.zeros((4, 6, 3), np.uint8), np.full((3, 4, 6), 0.25, np.float32)
    assert store.resume_point(0) == (0, None)
    for t in range(3):
        store.save(t, 1001 * t, 1001, rgb, chain + t)
    store.save(3, 3003, None, rgb, None)  # killed after frame 3's PNG, before its chain state
    first, state = store.resume_point(0)
    assert first == 3 and np.array_equal(state, chain + 2)  # frame 3 is redone from the chain after frame 2
    assert [f[:3] for f in store.frames()] == [(0, 0, 1001), (1, 1001, 1001), (2, 2002, 1001), (3, 3003, None)]
    (tmp_path / "v" / "000001.1001.1001.png").unlink()  # a frame missing below the chain: start over
    assert store.resume_point(0) == (0, None)
    store.remove()
    assert not (tmp_path / "v").exists()


def test_video_mode_flickers_less_than_independent_frames(tmp_path):
    clip = _clip(tmp_path / "clip.mp4", 8)
    sources, _ = _decode(clip)
    got = {}
    for mode in ("dis", "none"):
        cfg = _cfg(video_flow=mode, keep_frames=True, iterations=3)
        run_job(cfg, [str(clip)], tmp_path / mode, create_backend, progress=False)
        got[mode] = sequence_flicker(_frames(tmp_path / mode, cfg, "clip.mp4"), sources)
    (f_video, s_video), (f_ind, s_ind) = got["dis"], got["none"]
    assert s_video >= 0.8 * s_ind, got  # at least as strong a dream ...
    assert f_video <= 0.8 * f_ind, got  # ... with clearly less flicker (the benchmark measures it properly)


def test_frames_larger_than_a_tile_window_go_through_the_tile_path(tmp_path, monkeypatch):
    """96x64 frames with --tile 32 (window 64): every frame's octave is dreamed in tiles, frames of two videos
    sharing tile batches; the videos come back whole."""
    from dreamfleet.engine.tiled import TileScheduler

    clips = [str(write_clip(tmp_path / f"t{i}.mp4", pan_frames(3, (96, 64), 2 + i), [1001 * t for t in range(3)],
                            Fraction(1, 30000), NTSC)) for i in range(2)]
    calls = []
    real = TileScheduler._tile_batch
    monkeypatch.setattr(TileScheduler, "_tile_batch", lambda self, chunk: (calls.append(len(chunk)), real(self, chunk)))
    cfg = _cfg(max_side=96, tile=32, tile_overlap=16, iterations=1, batch_size=4)
    rep = run_job(cfg, clips, tmp_path / "out", create_backend, progress=False)
    assert [r.status for r in rep.records] == ["done", "done"] and all(r.video["frames"] == 3 for r in rep.records)
    assert calls and max(calls) == 4  # tiles of both videos' frames fill the tile batches
    assert all(len(_decode(Path(r.output))[0]) == 3 for r in rep.records)


def test_broken_and_truncated_videos_are_failure_records(tmp_path):
    from video_fixtures import broken_clip, truncated_clip

    (tmp_path / "in").mkdir()
    broken_clip(tmp_path / "in" / "broken.mp4")  # starts like an MP4, does not open
    truncated_clip(tmp_path / "in" / "cut.mp4", n=12, keep=0.5)  # a faststart MP4 cut short: lists 12 frames
    _clip(tmp_path / "in" / "good.mp4", 3)
    rep = run_job(_cfg(), sorted(str(p) for p in (tmp_path / "in").iterdir()), tmp_path / "out", create_backend,
                  progress=False)
    recs = {r.rel: r for r in rep.records}
    assert recs["good.mp4"].status == "done" and recs["broken.mp4"].status == "failed"
    assert recs["broken.mp4"].reason
    cut = recs["cut.mp4"]
    assert cut.status == "failed" and "truncated" in cut.reason and cut.output  # what decoded is dreamed, and said
    assert 0 < cut.video["frames"] < 12 and Path(cut.output).exists()


def test_frame_count_timestamps_and_audio_survive_the_cli(tmp_path):
    from dreamfleet.cli import main

    clip = pan_clip(tmp_path / "clip.mp4", n=10)
    args = ["dream", str(clip), "-o", str(tmp_path / "out"), "--random-weights", "--layer", "inception3b",
            "--octaves", "1", "--iterations", "1", "--max-side", "96", "--snap", "16", "--no-progress"]
    assert main(args) == 0
    out = tmp_path / "out" / "clip.mp4"
    src_frames, src_pts = _decode(clip)
    got_frames, got_pts = _decode(out)
    assert len(got_frames) == len(src_frames) == 10 and got_pts == src_pts
    with av.open(str(clip)) as a, av.open(str(out)) as b:
        assert b.streams.video[0].average_rate == a.streams.video[0].average_rate == NTSC
        pa = [bytes(p) for p in a.demux(audio=0) if p.size]
        pb = [bytes(p) for p in b.demux(audio=0) if p.size]
    assert pa == pb and pa  # audio copied packet for packet
    assert not (tmp_path / "out" / ".dreamfleet" / "video").exists()  # frames removed after the encode
    assert main(args) == 0  # a rerun skips the finished video


def test_contact_sheet_shows_a_frame_of_each_video(tmp_path):
    from PIL import Image

    from dreamfleet.cluster.contact_sheet import make_contact_sheet
    from dreamfleet.engine.report import ImageRecord

    clip = _clip(tmp_path / "clip.mp4", 4)
    rec = ImageRecord(str(clip), "clip.mp4", "done", output=str(clip), video={"frames": 4})
    sheet = make_contact_sheet([rec], tmp_path / "sheet.png", thumb=32)
    cell = np.asarray(Image.open(sheet))[4:36, 4:36]
    assert cell.std() > 10  # a picture of the clip's middle frame, not the empty background


def test_bad_video_options_exit_2_naming_them(tmp_path, capsys):
    from dreamfleet.cli import main

    for flag, value, words in [("--video-codec", "nope264", "libx264"), ("--video-blend", "1.5", "video_blend"),
                               ("--frames", "9:3", "frames"), ("--crf", "60", "crf")]:
        assert main(["dream", str(tmp_path / "x.mp4"), "-o", str(tmp_path / "o"), flag, value]) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
