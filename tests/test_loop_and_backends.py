"""Octave planning, too-small images, objectives, and the torch backends (eager, compile, bf16)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dreamfleet.backends import create_backend
from dreamfleet.engine.backends.base import Backend
from dreamfleet.engine.backends.compiled import CompiledBackend
from dreamfleet.engine.backends.eager import EagerBackend
from dreamfleet.engine.build import build_dream_model
from dreamfleet.engine.config import make_config
from dreamfleet.engine.loop import dream_tensor
from dreamfleet.engine.octaves import build_pyramid, octave_sizes, plan_shapes, usable_octaves
from dreamfleet.engine.sizing import working_size

CPU = torch.device("cpu")


class Recorder(Backend):
    """Wraps a backend and records every shape it is asked to step."""

    name = "recorder"

    def __init__(self, inner: Backend) -> None:
        super().__init__()
        self.inner, self.seen = inner, set()

    def step(self, x):
        self.seen.add(tuple([x.shape[0], *x.shape[-2:]]))
        return self.inner.step(x)


def test_plan_shapes_matches_what_the_loop_runs():
    cfg = make_config("classic", overrides=dict(octaves=3, iterations=1, jitter=0, batch_size=2))
    dm = build_dream_model(cfg.model, "inception3a")
    rec = Recorder(EagerBackend(dm.module, CPU))
    sizes = [(64, 96)] * 3 + [(96, 64)]
    planned = plan_shapes(sizes, cfg.batch_size, cfg.octaves, cfg.octave_scale, dm.spec.min_size)
    for hw, n in (((64, 96), 2), ((64, 96), 1), ((96, 64), 1)):
        dream_tensor(rec, torch.rand(n, 3, *hw), cfg, dm.spec, [str(i) for i in range(n)])
    assert rec.seen == set(planned)
    for h, w in ((97, 131), (500, 333)):
        levels = build_pyramid(torch.zeros(1, 3, h, w), 4, 1.4, "nearest")
        assert [tuple(t.shape[-2:]) for t in levels] == octave_sizes(h, w, 4, 1.4)


def test_too_small_octaves_are_dropped_not_crashed():
    spec_min = 75  # inception_v3
    assert usable_octaves(128, 128, 4, 1.4, spec_min) == 2  # 128 -> 91 -> 65 (too small)
    with pytest.raises(ValueError, match="smaller than the model's minimum input of 75 px"):
        usable_octaves(64, 64, 4, 1.4, spec_min)
    cfg = make_config("classic", overrides=dict(model="inception_v3", layer="Mixed_5b", random_weights=True,
                                                octaves=4, iterations=1))
    dm = build_dream_model(cfg.model, cfg.layer, random_weights=True)
    out = dream_tensor(EagerBackend(dm.module, CPU), torch.rand(1, 3, 96, 96), cfg, dm.spec, ["a"])
    assert out.shape == (1, 3, 96, 96)


def test_working_size_policy():
    cfg = make_config("classic", overrides=dict(max_side=512, snap=32))
    assert working_size(1000, 872, cfg) == (448, 512)  # (H, W): long side 512, aspect kept within a snap
    assert working_size(451, 300, cfg) == (288, 448)  # small images are not enlarged, only snapped
    assert working_size(10, 10, cfg) == (32, 32)
    assert working_size(640, 427, make_config("seed")) == (224, 224)


def test_channel_and_guided_objectives_dream():
    x = torch.rand(2, 3, 64, 64)
    dm = build_dream_model("bvlc_googlenet", "inception3b", "channel", channels=(3, 17))
    feats = dm.module.features(x)["inception3b"]
    torch.testing.assert_close(dm.module(x), feats[:, [3, 17]].mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="out of range"):
        build_dream_model("bvlc_googlenet", "inception3b", "channel", channels=(9999,)).module(x)
    guide = torch.rand(1, 3, 80, 80)
    for kind in ("guide", "guide-distance"):
        dm = build_dream_model("bvlc_googlenet", "inception3b", kind, guide=guide)
        obj, grad = EagerBackend(dm.module, CPU).step(x)
        assert obj.shape == (2,) and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs a guide image"):
        build_dream_model("bvlc_googlenet", "inception3b", "guide")


def test_guide_dot_gradient_is_best_matching_guide_feature():
    dm = build_dream_model("bvlc_googlenet", "inception3a", "guide", guide=torch.rand(1, 3, 64, 64))
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    feats = dm.module.features(x)["inception3a"]
    term = dm.module.objective.terms[0]
    dm.module(x.detach())  # computes the guide features
    a = feats.detach().flatten(2)[0]  # [C, P]
    g = term.guide  # [C, M]
    best = g[:, (a.T @ g).argmax(1)]  # Google's objective_guide: y[:, A.argmax(1)]
    a_req = feats.detach().requires_grad_(True)
    term({"inception3a": a_req}).sum().backward()
    torch.testing.assert_close(a_req.grad.flatten(2)[0], best)


def test_compiled_matches_eager_one_step():
    dm = build_dream_model("bvlc_googlenet", "inception3a")
    x = torch.rand(2, 3, 64, 64)
    eager = EagerBackend(dm.module, CPU)
    comp = CompiledBackend(dm.module, CPU)
    comp.prepare([(2, 64, 64)])
    o1, g1 = eager.step(x)
    o2, g2 = comp.step(x)
    torch.testing.assert_close(o2, o1, rtol=1e-4, atol=1e-5)
    cos = F.cosine_similarity(g1.flatten(), g2.flatten(), dim=0)
    assert cos > 0.9999 and (g1 - g2).norm() / g1.norm() < 1e-3


def test_bf16_autocast_close_to_fp32_and_factory():
    cfg = make_config("classic", overrides=dict(precision="bf16"))
    dm = build_dream_model("bvlc_googlenet", "inception3a")
    bf = create_backend(dm, cfg, CPU)
    assert bf.describe()["precision"] == "bf16"
    x = torch.rand(2, 3, 64, 64)
    _, g_bf = bf.step(x)
    _, g32 = EagerBackend(dm.module, CPU).step(x)
    assert g_bf.dtype == torch.float32
    assert F.cosine_similarity(g_bf.flatten(), g32.flatten(), dim=0) > 0.95  # bf16 has 8 mantissa bits
    with pytest.raises(ValueError, match="not supported on cpu; valid: fp32, fp64, bf16"):
        EagerBackend(dm.module, CPU, "fp16")
    with pytest.raises(ValueError, match="valid: eager, compile, onnxruntime, tensorrt"):
        create_backend(dm, _bad_backend_cfg(), CPU)


def _bad_backend_cfg():
    cfg = make_config()
    cfg.backend = "nope"
    return cfg


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precision_close_to_fp32(precision):
    cuda = torch.device("cuda")
    dm = build_dream_model("bvlc_googlenet", "inception4c")
    x = torch.rand(4, 3, 224, 224, device=cuda)
    _, g_half = EagerBackend(dm.module, cuda, precision).step(x)
    _, g32 = EagerBackend(dm.module, cuda, "fp32").step(x)
    assert F.cosine_similarity(g_half.flatten(), g32.flatten(), dim=0) > 0.95
