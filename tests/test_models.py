"""Registry, truncation, weights loading and the BVLC GoogLeNet's real classifications."""
from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from dreamfleet.cli import main
from dreamfleet.engine.build import build_dream_model, build_full_model
from dreamfleet.engine.models import get_spec, list_models
from dreamfleet.engine.truncate import layer_shapes, valid_layers
from dreamfleet.engine.weights import WeightsUnavailable, load_weights


def test_registry_has_the_six_models():
    assert list_models() == ["bvlc_googlenet", "googlenet", "vgg16", "vgg19", "inception_v3", "resnet50"]
    with pytest.raises(ValueError, match="valid: bvlc_googlenet, googlenet, vgg16"):
        get_spec("alexnet")


@pytest.mark.parametrize("name", ["bvlc_googlenet", "googlenet", "vgg16", "vgg19", "inception_v3", "resnet50"])
def test_truncated_at_default_layer(name):
    spec = get_spec(name)
    dm = build_dream_model(name, random_weights=True)
    full, _ = build_full_model(spec, random_weights=True)
    kept = sum(p.numel() for p in dm.module.parameters())
    assert 0 < kept < sum(p.numel() for p in full.parameters())
    assert not any(p.requires_grad for p in dm.module.parameters()) and not dm.module.training
    assert set(spec.dream_layers) <= set(valid_layers(spec, full)) and spec.default_layer in spec.dream_layers
    # the deepest recommended layer accepts the advertised minimum input
    deep = build_dream_model(name, spec.dream_layers[-1], random_weights=True)
    assert deep.module(torch.zeros(1, 3, spec.min_size, spec.min_size)).shape == (1,)


def test_truncation_drops_everything_after_the_layer():
    dm = build_dream_model("bvlc_googlenet", "inception4c")
    names = {n.split(".")[0] for n, _ in dm.module.features.named_parameters()}
    assert "inception4c" in names and not names & {"inception4d", "inception5b", "fc"}
    vgg = build_dream_model("vgg16", "features.22", random_weights=True)
    assert len(vgg.module.features.body) == 23


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['inception9z'\].*valid: conv1, maxpool1"):
        build_dream_model("bvlc_googlenet", "inception9z")


def test_layer_shapes_and_cli(capsys):
    spec = get_spec("vgg16")
    full, _ = build_full_model(spec, random_weights=True)
    shapes = dict(layer_shapes(spec, full))
    assert shapes["features.30"] == (512, 7, 7) and shapes["features.29"] == (512, 14, 14)
    assert main(["layers", "bvlc_googlenet"]) == 0
    out = capsys.readouterr().out
    assert "inception4c" in out and "512x14x14" in out and "(default)" in out
    assert main(["models"]) == 0
    assert "resnet50" in capsys.readouterr().out


def test_multi_layer_objective_builds():
    dm = build_dream_model("bvlc_googlenet", "inception4c:1.0,inception4d:0.5")
    assert dm.layers == [("inception4c", 1.0), ("inception4d", 0.5)]
    assert dm.module(torch.rand(2, 3, 64, 64)).shape == (2,)


def test_offline_weights_failure_names_three_fixes(monkeypatch, tmp_path):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights_cls = type(torchvision.models.get_weight("VGG16_Weights.IMAGENET1K_V1"))

    def no_network(self, *a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(weights_cls, "get_state_dict", no_network)
    spec = get_spec("vgg16")
    with pytest.raises(WeightsUnavailable) as err:
        load_weights(spec, spec.builder())
    msg = str(err.value)
    assert "vgg16-397923af.pth" in msg and "--weights PATH" in msg and "--random-weights" in msg
    assert str(tmp_path) in msg


def test_torchvision_cache_is_used_offline(monkeypatch, tmp_path):
    """A file in $TORCH_HOME/hub/checkpoints is loaded without any download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = get_spec("googlenet")
    donor = spec.builder()
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(donor.state_dict(), ckpt / "googlenet-1378be20.pth")
    model = spec.builder()
    info = load_weights(spec, model)
    assert info["source"] == "torchvision"
    assert torch.equal(model.conv1.conv.weight, donor.conv1.conv.weight)


def test_local_weights_file_and_random(tmp_path):
    from safetensors.torch import save_file

    spec = get_spec("resnet50")
    donor = spec.builder()
    path = tmp_path / "r50.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    model = spec.builder()
    assert load_weights(spec, model, weights=str(path))["source"] == "file"
    assert torch.equal(model.fc.weight, donor.fc.weight)
    pth = tmp_path / "r50.pth"
    torch.save({"state_dict": donor.state_dict()}, pth)
    assert load_weights(spec, spec.builder(), weights=str(pth))["path"] == str(pth)
    assert load_weights(spec, model, random_weights=True)["source"] == "random"
    with pytest.raises(ValueError, match="valid suffixes"):
        load_weights(spec, model, weights=str(tmp_path / "x.npz"))


@pytest.mark.parametrize("photo,label,prob", [("chelsea.png", "Egyptian cat", 0.50), ("coffee.png", "espresso", 0.90),
                                              ("rocket.jpg", "missile", 0.31)])
def test_vendored_bvlc_googlenet_classifies_samples(samples_dir, photo, label, prob):
    import torchvision
    from torchvision.transforms import v2

    spec = get_spec("bvlc_googlenet")
    model, info = build_full_model(spec)
    assert info["source"] == "vendored"
    tf = v2.Compose([v2.Resize(256), v2.CenterCrop(224), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(spec.mean, spec.std)])
    x = tf(Image.open(samples_dir / photo).convert("RGB"))[None]
    with torch.no_grad():
        p = model(x).softmax(1)[0]
    cats = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"]
    top = int(p.argmax())
    assert cats[top] == label
    assert np.isclose(float(p[top]), prob, atol=0.03)


def test_vendored_weights_checked_by_sha256(tmp_path, monkeypatch):
    import dataclasses

    bad = tmp_path / "bvlc_googlenet.safetensors"
    bad.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    spec = dataclasses.replace(get_spec("bvlc_googlenet"))
    monkeypatch.setattr("dreamfleet.engine.models.WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsUnavailable, match="damaged"):
        load_weights(spec, spec.builder())
