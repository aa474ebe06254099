"""Config precedence, presets, validation and the parameter hash."""
from __future__ import annotations

import pytest

from dreamfleet.engine.config import PRESETS, DreamConfig, load_toml, make_config


def test_precedence_defaults_preset_file_flags(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('preset = "seed"\niterations = 7\n[dream]\nstep = 0.2\n')
    cfg = make_config(None, load_toml(job), {"iterations": 9, "layer": None})
    assert cfg.model == "vgg16" and cfg.step == 0.2 and cfg.iterations == 9 and cfg.layer == "features.30"
    assert make_config().model == DreamConfig().model == "bvlc_googlenet"


def test_presets():
    classic, seed = make_config("classic"), make_config("seed")
    assert (classic.octaves, classic.octave_scale, classic.iterations, classic.step, classic.jitter) == (4, 1.4, 10, 1.5, 32)
    assert classic.layer == "inception4c" and classic.step_units == "pixel" and classic.grad_norm == "mean_abs"
    assert (seed.octaves, seed.iterations, seed.step, seed.jitter, seed.fixed_size) == (3, 20, 0.1, 0, 224)
    assert seed.clamp_range() == (-3.0, 3.0) and seed.interpolation == "nearest" and seed.objective == "norm"
    assert set(PRESETS) == {"classic", "seed", "smooth"}


@pytest.mark.parametrize("bad,match", [({"precision": "fp8"}, "valid: fp32, fp64, bf16, fp16"),
                                       ({"octave_scale": 1.0}, "octave_scale"),
                                       ({"clamp": "x"}, "LO,HI"), ({"colour": 1}, "unknown config key"),
                                       ({"interpolation": "cubic"}, "valid: bilinear, nearest")])
def test_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        make_config("classic", overrides=bad)
    with pytest.raises(ValueError, match="valid: classic, seed, smooth"):
        make_config("nope")


def test_param_hash_covers_pixels_only():
    a = make_config("classic")
    assert a.param_hash() == make_config("classic", overrides={"batch_size": 64, "backend": "compile"}).param_hash()
    assert a.param_hash() != make_config("classic", overrides={"step": 2.0}).param_hash()
    assert a.param_hash() != make_config("classic", overrides={"seed": 1}).param_hash()


def test_types_coerced_default_layer_named_and_preset_recorded():
    assert make_config().param_hash() == make_config("classic").param_hash()  # defaults equal classic
    assert make_config(overrides={"step": 2}).param_hash() == make_config(overrides={"step": 2.0}).param_hash()
    assert make_config(overrides={"octaves": "3"}).octaves == 3
    for bad, match in (({"octaves": "x"}, "octaves must be an integer"), ({"batch_size": 2.5}, "batch_size"),
                       ({"overwrite": "yes"}, "true or false")):
        with pytest.raises(ValueError, match=match):
            make_config(overrides=bad)
    cfg = make_config("seed", {"preset": "classic"})
    assert cfg.preset == "seed" and cfg.model == "vgg16"
