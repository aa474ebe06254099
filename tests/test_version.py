"""One version from one place: pyproject.toml -> package metadata -> --version, outputs, report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import dreamfleet
from dreamfleet.cli import main
from dreamfleet.engine.config import read_toml
from dreamfleet.engine.imageio import read_metadata
from dreamfleet.engine.report import environment
from dreamfleet.engine.version import dreamfleet_version

from conftest import REPO, random_rgb


@pytest.fixture(scope="module")
def pyproject_version() -> str:
    version = read_toml(REPO / "pyproject.toml")["project"]["version"]
    assert dreamfleet_version() == version, (
        f"installed metadata says {dreamfleet_version()}, pyproject.toml {version}: reinstall (make setup)")
    return version


def test_version_flag_and_package_attribute(pyproject_version, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"dreamfleet {pyproject_version}"
    assert dreamfleet.__version__ == pyproject_version
    assert environment()["dreamfleet"] == pyproject_version


def test_outputs_and_report_record_the_version(pyproject_version, tmp_path: Path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(random_rgb(40, 48)).save(src / "a.png")
    code = main(["dream", str(src), "-o", str(out), "--random-weights", "--layer", "inception3a", "--octaves", "1",
                 "--iterations", "1", "--max-side", "32", "--jitter", "2", "--no-progress"])
    assert code == 0
    assert read_metadata(out / "a.png")["dreamfleet"] == pyproject_version
    report = json.loads((out / "dreamfleet-report.json").read_text())
    assert report["environment"]["dreamfleet"] == pyproject_version
