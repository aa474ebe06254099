"""The `seed` preset reproduces the seed article's dream() for one image.

The reference below is written straight from the article: vgg16 features up to index 30,
octaves built with nearest-neighbour interpolate, objective = out.norm(), step
x += 0.1 * g / ||g||, clamp to [-3, 3], no jitter. Both sides load the same weights file.
The comparison runs in fp64 (fp32 ReLU switch points make long runs drift) with the
preset's iterations cut to 3 to keep CPU time down; every other preset value is used as is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

from dreamfleet.engine.backends.eager import EagerBackend
from dreamfleet.engine.build import build_dream_model
from dreamfleet.engine.config import make_config
from dreamfleet.engine.loop import dream_normalized


def article_dream(model, image, iterations, lr=0.1, octave_scale=1.4, num_octaves=3):
    octaves = [image]
    for _ in range(num_octaves - 1):
        octaves.append(F.interpolate(octaves[-1], scale_factor=1 / octave_scale, mode="nearest"))
    detail = torch.zeros_like(octaves[-1])
    for i, octave_base in enumerate(reversed(octaves)):
        if i > 0:
            detail = F.interpolate(detail, size=octave_base.shape[-2:], mode="nearest")
        x = (octave_base + detail).clone().requires_grad_(True)
        for _ in range(iterations):
            out = model(x)
            loss = out.norm()
            loss.backward()
            g = x.grad
            x.data += lr * g / g.norm()
            x.grad.zero_()
            x.data.clamp_(-3, 3)
        detail = x.data - octave_base
    return x.data


def test_seed_preset_matches_article_loop(tmp_path):
    torch.manual_seed(1)
    vgg = torchvision.models.vgg16(weights=None)
    weights = tmp_path / "vgg16.safetensors"
    save_file({k: v.contiguous() for k, v in vgg.state_dict().items()}, str(weights))

    cfg = make_config("seed", overrides=dict(weights=str(weights), iterations=3, precision="fp64"))
    assert (cfg.model, cfg.layer, cfg.octaves, cfg.octave_scale, cfg.fixed_size) == ("vgg16", "features.30", 3, 1.4, 224)
    dm = build_dream_model(cfg.model, cfg.layer, cfg.objective, weights=cfg.weights)

    # the article's model: the same file, vgg16.features cut after layer 30
    ref_vgg = torchvision.models.vgg16(weights=None)
    from safetensors.torch import load_file

    ref_vgg.load_state_dict(load_file(str(weights)))
    ref_model = nn.Sequential(*list(ref_vgg.features.children())[:31]).double().eval()

    x = torch.randn(1, 3, 224, 224, dtype=torch.float64).clamp(-2, 2)  # a normalized 224x224 image
    expected = article_dream(ref_model, x.clone(), iterations=3)
    backend = EagerBackend(dm.module, torch.device("cpu"), "fp64", channels_last=False)
    got = dream_normalized(backend, x.clone(), cfg, dm.spec, ["img"])
    assert got.shape == expected.shape == (1, 3, 224, 224)
    assert (got - x).abs().max() > 0.01  # it did dream
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
