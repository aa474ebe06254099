"""Bad option values (NaN, inf, out of range) and inputs that do not exist: exit 2, one line naming it, nothing written.

The ranges live with the fields (``engine.config.Limits``); ``dream``, ``run`` and job files share them.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from dreamfleet.cli import main
from dreamfleet.cluster.driver import ClusterOptions
from dreamfleet.engine.config import DreamConfig, make_config
from dreamfleet.engine.limits import Limits, field_limits

from conftest import random_rgb


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(random_rgb(40, 48)).save(path)
    return path


# flag, value, what the one error line must name
FLAG_CASES = [
    ("--step", "nan", "step"), ("--step", "inf", "step"), ("--step", "-inf", "step"), ("--step", "0", "step"),
    ("--octave-scale", "nan", "octave_scale"), ("--octave-scale", "inf", "octave_scale"),
    ("--octave-scale", "1", "octave_scale"), ("--max-pixels", "0", "max_pixels"),
    ("--clamp", "nan,3", "clamp"), ("--clamp", "-inf,inf", "clamp"), ("--layer", "inception4c:nan", "layer"),
    ("--layer", "inception4c:0", "layer"), ("--smooth-sigma", "nan", "smooth_sigma"), ("--seed", "-1", "seed"),
    ("--io-threads", "-2", "io_threads"), ("--jitter", "-1", "jitter"),
]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dreamfleet: error: ") and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("flag,value,name", FLAG_CASES, ids=[f"{f}={v}" for f, v, _ in FLAG_CASES])
def test_dream_flag_out_of_range_exits_2_before_writing(flag, value, name, photo, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["dream", str(photo), "-o", str(out), "--no-progress", f"{flag}={value}"]) == 2
    line = _one_line(capsys)
    assert name in line and flag in line, line
    assert not out.exists()


@pytest.mark.parametrize("body,name", [("step = nan", "step"), ("step = inf", "step"), ("octave-scale = nan", "octave_scale"),
                                       ("octaves = inf", "octaves"), ("max_pixels = 0", "max_pixels"),
                                       ("clamp = \"0,nan\"", "clamp"), ("[dream]\nstep = -inf", "step"),
                                       ("objective = \"channel\"\nchannels = [inf]", "channels"),
                                       ("objective = \"channel\"\nchannels = [nan]", "channels")])
def test_job_file_value_out_of_range_exits_2(body, name, photo, tmp_path, capsys):
    job, out = tmp_path / "job.toml", tmp_path / "out"
    job.write_text(body + "\n")
    assert main(["dream", str(photo), "-o", str(out), "--config", str(job), "--no-progress"]) == 2
    assert name in _one_line(capsys) and not out.exists()
    job.write_text(f'inputs = ["{photo.name}"]\noutput = "out"\n' + body + "\n")  # `run JOB.toml`: before Ray starts
    assert main(["run", str(job), "--no-progress"]) == 2
    assert name in _one_line(capsys) and not out.exists()


@pytest.mark.parametrize("flag,value", [("--step", "nan"), ("--gpus-per-worker", "nan"), ("--shard-timeout", "inf"),
                                        ("--workers", "0"), ("--threads-per-worker", "0"), ("--retries", "-1"),
                                        ("--max-pixels", "0")])
def test_run_flag_out_of_range_exits_2_before_ray(flag, value, photo, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(photo), "-o", str(out), "--no-progress", flag, value]) == 2
    assert flag in _one_line(capsys) and not out.exists()


def test_no_input_exists_is_a_usage_error(photo, tmp_path, capsys):
    out = tmp_path / "out"
    missing = [str(tmp_path / "nope"), str(tmp_path / "gone" / "*.jpg")]
    for cmd in ("dream", "run"):
        assert main([cmd, *missing, "-o", str(out), "--no-progress"]) == 2
        line = _one_line(capsys)
        assert "no such file or folder: " in line and all(m in line for m in missing), line
        assert not out.exists()


def test_one_missing_input_among_existing_stays_a_failure_record(photo, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["dream", str(photo), str(tmp_path / "nope"), "-o", str(out), "--no-progress", "--model", "googlenet",
                 "--random-weights", "--octaves", "1", "--iterations", "1", "--max-side", "48"])
    assert code == 1 and (out / "in.png").is_file()
    assert "no such file or folder" in capsys.readouterr().err


def test_every_numeric_field_has_a_range_and_rejects_nan():
    numeric = {name for name, kind in DreamConfig.__annotations__.items() if kind.split(" |")[0] in ("int", "float")}
    assert numeric == set(field_limits(DreamConfig)), numeric ^ set(field_limits(DreamConfig))
    for name in numeric | {"step"}:
        with pytest.raises(ValueError, match=name):
            make_config(overrides={name: math.nan})
    cluster = {name for name, kind in ClusterOptions.__annotations__.items() if kind.split(" |")[0] in ("int", "float")}
    assert cluster == set(field_limits(ClusterOptions))
    for name in cluster:
        with pytest.raises(ValueError, match=name):
            ClusterOptions(**{name: math.inf}).validate()


def test_limits_describe_and_accept_bounds():
    lim = Limits(1.0, 10.0, lo_open=True)
    assert lim.describe() == "a finite number > 1 and <= 10" and Limits(1, 8).describe(integer=True) == "in 1..8"
    lim.check("octave_scale", 10.0)
    for bad in (1.0, 10.5, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"octave_scale must be a finite number > 1 and <= 10.*\(--octave-scale\)"):
            lim.check("octave_scale", bad)
    make_config(overrides=dict(max_pixels=1, octave_scale=10.0, seed=0, io_threads=-1))  # the bounds themselves pass
