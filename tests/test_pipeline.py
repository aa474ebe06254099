"""The overlapped pipeline and the fast decode path: same outputs and records, bounded, honest failures."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dreamfleet.engine.backends.base import Backend
from dreamfleet.engine.config import make_config
from dreamfleet.engine.imageio import ImageLoadError, load_image, load_working_image
from dreamfleet.engine.job import run_job
from dreamfleet.engine.pipeline import Window, resolve_io_threads
from dreamfleet.engine.sizing import to_tensor


class _SinBackend(Backend):
    """A cheap image-dependent gradient (no model), so outputs differ per image."""

    def step(self, x):
        return x.sum((1, 2, 3)), torch.sin(3.0 * x)


def _factory(dm, cfg, device):
    return _SinBackend()


def _cfg(**kw):
    values = dict(model="googlenet", random_weights=True, max_side=64, iterations=2, octaves=2, batch_size=3)
    values.update(kw)
    return make_config(None, None, values)


def _photo(h: int, w: int, seed: int = 0) -> Image.Image:
    """A smooth photo-like test image (gradients + blobs + mild noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + seed), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1) * 0.4 + 0.5
    arr = np.clip(base + rng.normal(0, 0.03, base.shape), 0, 1)
    return Image.fromarray((arr * 255).astype(np.uint8), "RGB")


def _inputs(folder, n=7):
    folder.mkdir()
    for i in range(n):
        _photo(96 if i % 2 else 80, 120, i).save(folder / f"p{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG nope")
    _photo(300, 400, 9).save(folder / "big.jpg", quality=90)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


def test_overlapped_equals_inline_outputs_and_records(tmp_path):
    _inputs(tmp_path / "in")
    reports = {}
    for threads in (-1, 2):
        out = tmp_path / f"out{threads}"
        reports[threads] = run_job(_cfg(io_threads=threads), [str(tmp_path / "in")], out, _factory, progress=False)
    a, b = reports[-1], reports[2]
    assert a.counts() == b.counts() == {"done": 8, "skipped": 0, "failed": 1}
    sa = {r.rel: (r.status, r.reason, r.shape) for r in a.records}
    assert sa == {r.rel: (r.status, r.reason, r.shape) for r in b.records}
    for r in a.records:
        if r.status == "done":
            assert (tmp_path / "out-1" / r.rel).read_bytes() == (tmp_path / "out2" / r.rel).read_bytes()
            assert set(r.timings) >= {"load", "dream", "save"}
    assert not list(tmp_path.rglob("*dreamfleet-tmp"))
    again = run_job(_cfg(io_threads=2), [str(tmp_path / "in")], tmp_path / "out2", _factory, progress=False)
    assert again.counts() == {"done": 0, "skipped": 8, "failed": 1}  # resume unchanged


def test_failing_write_is_a_failure_record_and_the_rest_proceeds(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for i in range(4):
        _photo(64, 64, i).save(tmp_path / "in" / ("sub" if i == 0 else ".") / f"q{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where the output folder should go")
    rep = run_job(_cfg(io_threads=2), [str(tmp_path / "in")], out, _factory, progress=False)
    failed = [r for r in rep.records if r.status == "failed"]
    assert [r.rel for r in failed] == ["sub/q0.png"] and failed[0].reason.startswith("cannot write output")
    assert failed[0].retryable and rep.counts()["done"] == 3
    assert not list(out.rglob("*dreamfleet-tmp"))


def test_windows_bound_outstanding_work(tmp_path, monkeypatch):
    from dreamfleet.engine import runner as runner_mod

    _inputs(tmp_path / "in", n=12)
    seen = []
    real = runner_mod.DreamRunner._queue_writes

    def spy(self, b, results, emit, writes):
        seen.append(len(writes))
        assert len(writes) <= writes.limit
        return real(self, b, results, emit, writes)

    monkeypatch.setattr(runner_mod.DreamRunner, "_queue_writes", spy)
    rep = run_job(_cfg(io_threads=1), [str(tmp_path / "in")], tmp_path / "out", _factory, progress=False)
    assert rep.counts()["done"] == 13 and seen
    w = Window(2)
    assert not w.full()


def test_8bit_inputs_go_to_the_device_as_uint8(tmp_path, monkeypatch):
    from dreamfleet.engine.transfer import HostTransfer

    _inputs(tmp_path / "in", n=3)
    dtypes = []
    real = HostTransfer.upload
    monkeypatch.setattr(HostTransfer, "upload", lambda self, x: (dtypes.append(x.dtype), real(self, x))[1])
    rep = run_job(_cfg(io_threads=1), [str(tmp_path / "in")], tmp_path / "out", _factory, progress=False)
    assert rep.counts()["done"] == 4 and dtypes and set(dtypes) == {torch.uint8}  # 1/4 the bytes; /255 on the device


def test_io_threads_resolution():
    assert resolve_io_threads(3, 8) == 3 and resolve_io_threads(0, 4) == 4 and resolve_io_threads(-1) == -1
    assert resolve_io_threads(0, 0) >= 1
    with pytest.raises(ValueError, match="io_threads"):
        _cfg(io_threads=-2)


def test_fast_decode_matches_the_float_path(tmp_path):
    # already at the working size: bit-identical
    _photo(64, 96, 1).save(tmp_path / "same.png")
    old = to_tensor(load_image(tmp_path / "same.png", 10**8).rgb, (64, 96))
    assert torch.equal(load_working_image(tmp_path / "same.png", (64, 96), 10**8).pixels, old)
    # a big JPEG, DCT-scaled and resized in uint8: close to the antialiased float path
    _photo(1200, 1600, 2).save(tmp_path / "big.jpg", quality=92)
    for hw in ((128, 160), (224, 224), (384, 512)):
        new = load_working_image(tmp_path / "big.jpg", hw, 10**8).pixels
        ref = to_tensor(load_image(tmp_path / "big.jpg", 10**8).rgb, hw)
        assert new.shape == ref.shape == (3, *hw) and _psnr(new, ref) > 38.0
    # EXIF rotation with draft: the stored image is 1600x1200, the working image portrait
    im = _photo(1200, 1600, 3)
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "rot.jpg", quality=92, exif=exif.tobytes())
    new = load_working_image(tmp_path / "rot.jpg", (160, 128), 10**8).pixels
    ref = to_tensor(load_image(tmp_path / "rot.jpg", 10**8).rgb, (160, 128))
    assert _psnr(new, ref) > 38.0
    # a camera's multi-picture JPEG (MPO): the first frame, DCT-scaled too
    _photo(1200, 1600, 5).save(tmp_path / "cam.mpo", format="MPO", save_all=True,
                               append_images=[_photo(1200, 1600, 6)], quality=90)
    new = load_working_image(tmp_path / "cam.mpo", (128, 160), 10**8).pixels
    assert _psnr(new, to_tensor(load_image(tmp_path / "cam.mpo", 10**8).rgb, (128, 160))) > 38.0
    # a file object works too, and bad bytes give the same reasons
    with open(tmp_path / "big.jpg", "rb") as fh:
        assert load_working_image(fh, (128, 160), 10**8).pixels.shape == (3, 128, 160)
    with pytest.raises(ImageLoadError, match="empty file"):
        load_working_image(io.BytesIO(b""), (8, 8), 10**8)
    with pytest.raises(ImageLoadError, match="pixel limit"):
        load_working_image(tmp_path / "big.jpg", (8, 8), 1000)


def test_alpha_at_working_size_equals_the_save_paths_resize(tmp_path):
    rgba = _photo(100, 140, 4).convert("RGBA")
    a = np.tile(np.linspace(0, 255, 140, dtype=np.uint8), (100, 1))
    rgba.putalpha(Image.fromarray(a, "L"))
    rgba.save(tmp_path / "a.png")
    img = load_working_image(tmp_path / "a.png", (64, 96), 10**8)
    ref = np.asarray(Image.fromarray(a, "L").resize((96, 64), Image.Resampling.LANCZOS))
    assert img.alpha.shape == (64, 96) and np.array_equal((img.alpha * 255 + 0.5).astype(np.uint8), ref)


class _PoisonBackend(_SinBackend):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def step(self, x):
        flat = x.flatten(2)
        if ((flat.amax(2) - flat.amin(2)) < 1e-6).all(1).any():
            raise RuntimeError("poison image crashed the model")
        return super().step(x)


def test_poison_batch_is_split_and_only_the_poison_fails(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(6):
        im = Image.new("RGB", (64, 64), (90, 90, 90)) if i == 2 else _photo(64, 64, i)
        im.save(tmp_path / "in" / f"r{i}.png")
    rep = run_job(_cfg(batch_size=4, io_threads=2), [str(tmp_path / "in")], tmp_path / "out",
                  lambda dm, cfg, device: _PoisonBackend(), progress=False)
    failed = [r for r in rep.records if r.status == "failed"]
    assert [r.rel for r in failed] == ["r2.png"] and "poison image crashed" in failed[0].reason
    assert failed[0].retryable and rep.counts()["done"] == 5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_two_batches_in_flight_match_cpu(tmp_path):
    """Fences and pinned non-blocking copies: CUDA results equal the CPU run's (to 8-bit output)."""
    class _CudaSin(_SinBackend):
        def __init__(self) -> None:
            super().__init__()
            self.device = torch.device("cuda")

    _inputs(tmp_path / "in", n=9)
    outs = {}
    for dev in ("cpu", "cuda"):
        factory = (lambda dm, cfg, device: _CudaSin()) if dev == "cuda" else _factory
        rep = run_job(_cfg(device=dev, batch_size=2), [str(tmp_path / "in")], tmp_path / dev, factory, progress=False)
        assert rep.counts()["done"] == 10
        outs[dev] = {r.rel: np.asarray(Image.open(r.output), dtype=np.int16) for r in rep.records if r.output}
    for rel, arr in outs["cpu"].items():
        assert np.abs(arr - outs["cuda"][rel]).max() <= 2, rel


def _items(folder, hws):
    from dreamfleet.engine.runner import WorkItem

    folder.mkdir(exist_ok=True)
    items = []
    for i, (h, w, bits) in enumerate(hws):
        p = folder / f"m{i}.png"
        arr = np.asarray(_photo(h, w, i))
        if bits == 16:  # a 16-bit grayscale source: the full-precision float path
            Image.fromarray(arr[..., 0].astype(np.uint16) * 257).save(p)
        else:
            Image.fromarray(arr).save(p)
        items.append(WorkItem(str(p), p.name, str(folder / f"o{i}.png"), (h, w)))
    return items


def test_8bit_batches_upload_uint8_and_mixed_batches_upload_float(tmp_path):
    from dreamfleet.engine.runner import DreamRunner

    runner = DreamRunner(_cfg(io_threads=1, batch_size=4), _factory)
    try:
        recs = runner.process(_items(tmp_path / "a", [(32, 48, 8)] * 4))
        assert [r.status for r in recs] == ["done"] * 4
        assert runner.transfer.bytes_up == 4 * 3 * 32 * 48  # one byte per value: decoded uint8, not float32
        runner.transfer.bytes_up = 0
        recs = runner.process(_items(tmp_path / "b", [(32, 48, 8), (32, 48, 16), (32, 48, 8)]))
        assert [r.status for r in recs] == ["done"] * 3  # 16-bit among 8-bit: the batch goes up as float32
        assert runner.transfer.bytes_up == 3 * 3 * 32 * 48 * 4
    finally:
        runner.close()


def test_runner_makes_its_image_space_once_not_per_batch(tmp_path, monkeypatch):
    """ImageSpace.create copies host values to the device (blocking: on CUDA a stream sync that would wait
    for the batch in flight), so the runner makes it once and every batch, split retries included, reuses it."""
    from dreamfleet.engine import runner as runner_mod
    from dreamfleet.engine.space import ImageSpace

    class _FailsOnFour(_SinBackend):  # a batch of 4 fails: the split-and-retry path dreams the halves
        def step(self, x):
            if x.shape[0] == 4:
                raise RuntimeError("poison batch")
            return super().step(x)

    runner = runner_mod.DreamRunner(_cfg(io_threads=1, batch_size=4), lambda dm, cfg, dev: _FailsOnFour())
    calls = []
    real = ImageSpace.create
    monkeypatch.setattr(ImageSpace, "create", classmethod(lambda cls, *a: calls.append(a) or real(*a)))
    try:
        recs = runner.process(_items(tmp_path / "a", [(32, 48, 8)] * 6 + [(48, 32, 8)] * 2))
    finally:
        runner.close()
    assert [r.status for r in recs] == ["done"] * 8
    assert calls == []


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_one_off_downloads_keep_no_buffers_and_stay_valid(device):
    """download(reuse=False), the tile scheduler's: any number outstanding, each its own buffer, nothing kept."""
    from dreamfleet.engine.transfer import HostTransfer

    t = HostTransfer(torch.device(device), depth=2)
    gen = torch.Generator().manual_seed(0)
    pixels = [torch.rand(1, 3, 40, 56, generator=gen).to(device) for _ in range(5)]  # more than depth, one shape
    pending = [t.download(p, reuse=False) for p in pixels]
    for p, pend in zip(pixels, pending):
        assert torch.equal(pend.wait()[0], HostTransfer.quantize(p)[0].cpu())
    assert t._down == {} and t.bytes_down == 5 * 3 * 40 * 56
