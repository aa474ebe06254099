"""Batched == one-by-one: an image's result does not depend on the batch it landed in."""
from __future__ import annotations

import pytest
import torch

from dreamfleet.engine.backends.eager import EagerBackend
from dreamfleet.engine.build import build_dream_model
from dreamfleet.engine.config import make_config
from dreamfleet.engine.jitter import draw_shifts, image_rng, roll
from dreamfleet.engine.loop import ascent_step, dream_tensor
from dreamfleet.engine.space import ImageSpace


def _images(n: int, h: int, w: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, h, w, generator=g, dtype=dtype)


# What holds on every CPU model (AMD EPYC and Intel Xeon alike): fp32 kernels are chosen by shape and
# batch (oneDNN), so batched and single fp32 results agree to rounding, not bit for bit -- compared here
# by relative L2 over one step. A coupling bug (normalizing over the batch, mixing images) moves a step
# by O(1) in that measure; rounding moves it by ~1e-6; a max-pool near-tie routed differently by up to
# ~3e-4 (seen once). fp64 is exact to rounding; --reproducible is bit-identical in fp32.
FP32_STEP_BOUND = 1e-3


def _rel(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> float:
    return ((a - b).norm() / scale.norm()).item()


def test_one_step_batched_close_to_single_fp32():
    cfg = make_config("classic", overrides=dict(layer="inception4c", jitter=8))
    dm = build_dream_model(cfg.model, cfg.layer)
    be = EagerBackend(dm.module, torch.device("cpu"), "fp32")
    space = ImageSpace.create(dm.spec, cfg, torch.device("cpu"), torch.float32)
    z = space.to_model(_images(3, 96, 128))
    keys = ["a.jpg", "b/c.png", "d.png"]
    batched = ascent_step(be, z, [image_rng(cfg.seed, k) for k in keys], cfg, space)
    for i, k in enumerate(keys):
        single = ascent_step(be, z[i:i + 1], [image_rng(cfg.seed, k)], cfg, space)
        rel = _rel(batched[i:i + 1], single, single - z[i:i + 1])  # relative to the step itself
        assert rel < FP32_STEP_BOUND, f"image {k}: step differs by {rel:.2e} of its length"
    # the bound means something: a step normalized over the batch instead of per image breaks it
    _, grad = be.step(z)
    coupled = z + 1.5 * space.unit * (grad * space.unit) / (grad * space.unit).abs().mean()
    single0 = ascent_step(be, z[:1], [image_rng(cfg.seed, keys[0])], cfg, space)
    assert _rel(coupled[:1].clamp(space.lo, space.hi), single0, single0 - z[:1]) > 10 * FP32_STEP_BOUND


def test_gradients_do_not_couple_images():
    cfg = make_config("classic")
    dm = build_dream_model(cfg.model, "inception4c")
    be = EagerBackend(dm.module, torch.device("cpu"), "fp32")
    x = _images(2, 64, 64)
    _, g_batch = be.step(x)
    _, g0 = be.step(x[:1])
    assert _rel(g_batch[:1], g0, g0) < FP32_STEP_BOUND
    # scaling the other image's content changes nothing for image 0 (beyond rounding)
    x2 = x.clone()
    x2[1] *= 0.1
    _, g_batch2 = be.step(x2)
    assert _rel(g_batch2[:1], g0, g0) < FP32_STEP_BOUND
    assert _rel(g_batch2[1:], g_batch[1:], g_batch[1:]) > 10 * FP32_STEP_BOUND  # image 1's own change shows
    # fp64: the same comparisons hold to rounding (every CPU model)
    be64 = EagerBackend(dm.module, torch.device("cpu"), "fp64")
    _, g64_batch = be64.step(x2.double())
    _, g64_0 = be64.step(x2[:1].double())
    assert _rel(g64_batch[:1], g64_0, g64_0) < 1e-12


def test_reproducible_mode_is_bit_identical_across_batches_fp32():
    """--reproducible: an fp32 dream in a batch of 4 equals, bit for bit, the same image dreamed alone."""
    for channels_last in (False, True):  # channels_last is where plain batching differed most
        cfg = make_config("classic", overrides=dict(octaves=2, iterations=2, jitter=8, layer="inception4a",
                                                    reproducible=True))
        dm = build_dream_model(cfg.model, cfg.layer)
        be = EagerBackend(dm.module, torch.device("cpu"), "fp32", channels_last=channels_last)
        x = _images(4, 64, 80)
        keys = ["r/1.png", "r/2.png", "r/3.png", "r/4.png"]
        batched = dream_tensor(be, x, cfg, dm.spec, keys)
        assert (batched - x).abs().mean() > 1e-3  # it dreamed
        for i in (0, 3):
            single = dream_tensor(be, x[i:i + 1], cfg, dm.spec, [keys[i]])
            assert torch.equal(batched[i:i + 1], single), f"image {i}, channels_last={channels_last}"
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the dream


@pytest.mark.parametrize("smooth", ["none", "gaussian", "laplacian"])
def test_whole_dream_batched_equals_single_fp64(smooth):
    cfg = make_config("classic", overrides=dict(octaves=3, iterations=3, jitter=8, precision="fp64", layer="inception4a",
                                                smooth=smooth, smooth_sigma="0.5,2", lap_levels=4))
    dm = build_dream_model(cfg.model, cfg.layer)
    be = EagerBackend(dm.module, torch.device("cpu"), "fp64")
    x = _images(3, 96, 96, torch.float64)
    keys = ["x/1.png", "x/2.png", "x/3.png"]
    batched = dream_tensor(be, x, cfg, dm.spec, keys)
    assert (batched - x).abs().mean() > 1e-3  # it dreamed
    for i in (0, 2):
        single = dream_tensor(be, x[i:i + 1], cfg, dm.spec, [keys[i]])
        torch.testing.assert_close(batched[i:i + 1], single, rtol=0, atol=1e-10)


def test_per_image_rng_streams():
    a1 = draw_shifts([image_rng(0, "a.png")], 32)
    a2 = draw_shifts([image_rng(0, "b.png"), image_rng(0, "a.png")], 32)
    assert a1[0] == a2[1]
    # other seed, other stream: ten draws of two values in [-32, 32] cannot all coincide by chance
    other, same = image_rng(1, "a.png"), image_rng(0, "a.png")
    assert [draw_shifts([other], 32) for _ in range(10)] != [draw_shifts([same], 32) for _ in range(10)]
    assert draw_shifts([image_rng(0, "a.png")], 0) == [(0, 0)]


def test_roll_is_undone():
    x = _images(3, 16, 20)
    shifts = [(1, 2), (-3, 0), (5, -7)]
    torch.testing.assert_close(roll(roll(x, shifts), shifts, sign=-1), x)
    assert torch.equal(roll(x, shifts)[1], torch.roll(x[1], (-3, 0), dims=(1, 2)))


def test_gradient_normalized_per_image():
    cfg = make_config("classic")
    dm = build_dream_model(cfg.model, "inception3b")
    space = ImageSpace.create(dm.spec, cfg, torch.device("cpu"), torch.float32)
    z = torch.zeros(2, 3, 8, 8)
    g = torch.randn(2, 3, 8, 8)
    g[1] *= 1000.0  # a huge gradient on image 1 must not shrink image 0's step
    out = space.update(z, g, 1.5, "mean_abs")
    ref0 = space.update(z[:1], g[:1], 1.5, "mean_abs")
    torch.testing.assert_close(out[:1], ref0)
    # Google's update in 0-255 units: mean |step| is exactly 1.5 pixel units before clamping
    pix_step = (out - z) / space.unit
    inside = (out > space.lo) & (out < space.hi)
    assert abs(pix_step[0][inside[0]].abs().mean().item() - 1.5) < 0.5


def test_reproducible_runner_prepares_batch_1_shapes():
    from dreamfleet.backends import create_backend
    from dreamfleet.engine.runner import DreamRunner

    seen = []

    def factory(dm, cfg, device):
        be = create_backend(dm, cfg, device)
        be.prepare = seen.extend
        return be

    cfg = make_config("classic", overrides=dict(layer="inception3a", reproducible=True, device="cpu"))
    DreamRunner(cfg, factory).prepare([(4, 64, 64), (2, 64, 64), (4, 45, 45)])
    assert seen == [(1, 45, 45), (1, 64, 64)]
