"""Bad files and values given as options: exit 2, one line naming the file, nothing written (engine/preflight.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dreamfleet.cli import main

from conftest import random_rgb


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(random_rgb(40, 48)).save(path)
    return path


def _junk(path: Path, data: bytes = b"this is not what it claims to be\n" * 4) -> Path:
    path.write_bytes(data)
    return path


CASES = {
    "weights-safetensors": (lambda d: ["--weights", str(_junk(d / "bad.safetensors"))], "not a readable .safetensors"),
    "weights-pth": (lambda d: ["--weights", str(_junk(d / "bad.pth"))], "not a readable .pth"),
    "weights-missing": (lambda d: ["--weights", str(d / "none.pth")], "no such file"),
    "guide-not-image": (lambda d: ["--objective", "guide", "--guide", str(_junk(d / "guide.png"))],
                        "not an image"),
    "guide-missing": (lambda d: ["--objective", "guide", "--guide", str(d / "nope.jpg")], "no such file"),
    "onnx-not-onnx": (lambda d: ["--backend", "onnxruntime", "--onnx", str(_junk(d / "g.onnx"))], "not an ONNX model"),
    "config-invalid-toml": (lambda d: ["--config", str(_junk(d / "job.toml", b"iterations = = 3\n"))], "invalid TOML"),
    "config-missing": (lambda d: ["--config", str(d / "absent.toml")], "no such file"),
    "channels-out-of-range": (lambda d: ["--objective", "channel", "--layer", "inception3a", "--channels", "3,256"],
                              "out of range for layer 'inception3a'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_option_file_exits_2_naming_it_before_writing(case, photo, tmp_path, capsys):
    make_args, what = CASES[case]
    extra = make_args(tmp_path)
    out = tmp_path / "out"
    code = main(["dream", str(photo), "-o", str(out), "--no-progress", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("dreamfleet: error: ") and what in err[0], err
    named = next((a for a in extra if "/" in a), None)  # the file the user gave
    assert named is None or named in err[0], err
    if case == "channels-out-of-range":
        assert "256" in err[0] and "valid: 0..255" in err[0]
    assert not out.exists()  # no lock, no job.json, no report


def test_run_checks_files_before_starting_ray(photo, tmp_path, capsys):
    out = tmp_path / "out"
    bad = _junk(tmp_path / "w.safetensors")
    assert main(["run", str(photo), "-o", str(out), "--weights", str(bad), "--no-progress"]) == 2
    assert str(bad) in capsys.readouterr().err and not out.exists()
