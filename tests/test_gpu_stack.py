"""The GPU stack (export/gpu_stack.py, export/gpu_verify.py): one CUDA major, pinned, checked; no network needed.

Resolutions are canned ``pip install --dry-run --report`` JSON shaped like what PyPI served on 2026-12-07.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from dreamfleet.export import gpu_stack
from dreamfleet.export.gpu_stack import STACKS, check_resolution, install_commands, name_major, plan_command
from dreamfleet.export.gpu_verify import stack_problems

REPO = Path(__file__).resolve().parent.parent


def _item(name: str, version: str, requires: tuple[str, ...] = ()) -> dict:
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


TORCH_CU13 = _item("torch", "2.14.1", ('cuda-toolkit[cublas,cudart]==13.0.3; platform_system == "Linux"',
                                       'nvidia-cudnn-cu13==9.24.0.43; platform_system == "Linux"'))
TORCH_CU126 = _item("torch", "2.14.1+cu126", ('nvidia-cuda-runtime-cu12==12.6.77; platform_system == "Linux"',))
ORT_1311 = _item("onnxruntime-gpu", "1.31.1", ('nvidia-cuda-runtime~=13.0; extra == "cuda"',
                                               'nvidia-cudnn-cu13~=9.0; extra == "cudnn"'))
ORT_1260 = _item("onnxruntime-gpu", "1.26.0", ('nvidia-cuda-runtime-cu12~=12.0; extra == "cuda"',))
TRT_10 = [_item("tensorrt-cu13", "10.16.1.11"), _item("tensorrt_cu13_libs", "10.16.1.11"),
          _item("tensorrt_cu13_bindings", "10.16.1.11")]


def _report(*items) -> dict:
    return {"version": "1", "install": list(items)}


def test_one_cuda_major_resolves_clean_and_mixes_are_named():
    s13, s12 = STACKS["13"], STACKS["12"]
    good = _report(TORCH_CU13, ORT_1311, *TRT_10, _item("nvidia-cudnn-cu13", "9.24.0.43"), _item("numpy", "2.4.6"))
    assert check_resolution(good, s13) == []
    assert gpu_stack.resolved_parts(good)["tensorrt"] == dict(package="tensorrt-cu13-libs", version="10.16.1.11", cuda="13")
    # the defect of issue 17: the cu126 torch index beside PyPI's onnxruntime-gpu (CUDA 13)
    mixed = check_resolution(_report(TORCH_CU126, ORT_1311, *TRT_10), s13)
    assert any("torch 2.14.1+cu126 is built for CUDA 12" in p for p in mixed), mixed
    assert any("nvidia-cuda-runtime-cu12" not in p for p in mixed)
    assert check_resolution(_report(TORCH_CU126, ORT_1260, _item("tensorrt-cu12-libs", "10.16.1.11")), s12) == []
    trt11 = check_resolution(_report(TORCH_CU13, ORT_1311, _item("tensorrt-cu13-libs", "11.4.0.106")), s13)
    assert any("libnvinfer.so.10" in p for p in trt11), trt11
    cpu = check_resolution(_report(TORCH_CU13, ORT_1311, _item("onnxruntime", "1.32.0"), *TRT_10), s13)
    assert any("CPU package onnxruntime" in p for p in cpu), cpu
    stray = check_resolution(_report(TORCH_CU13, ORT_1311, *TRT_10, _item("nvidia-cublas-cu12", "12.9.3.13")), s13)
    assert stray == ["nvidia-cublas-cu12 is a CUDA 12 package in a CUDA 13 stack"]
    assert any("tensorrt is not in" in p for p in check_resolution(_report(TORCH_CU13, ORT_1311), s13))
    assert check_resolution(_report(TORCH_CU13, ORT_1311), s13, want_trt=False) == []


def test_majors_from_names_labels_and_requirements():
    assert name_major("tensorrt_cu13_bindings") == "13" and name_major("nvidia-cudnn-cu12") == "12"
    assert name_major("nvidia-cuda-runtime") is None and name_major("cucumber") is None
    assert gpu_stack.local_major("2.14.1+cu130") == "13" and gpu_stack.local_major("2.14.1+cpu") == "cpu"
    assert gpu_stack.local_major("2.14.1") is None
    assert gpu_stack.requires_major(['nvidia-cuda-runtime~=13.0; extra == "cuda"']) == "13"
    assert gpu_stack.requires_major(["cuda-toolkit[cudart]==12.9.1"]) == "12"
    assert gpu_stack.requires_major(["numpy", "nvidia-nccl-cu12", "nvidia-cudnn-cu13"]) is None  # ambiguous


def test_install_forces_the_stack_torch_build_whatever_was_there():
    py = "/v/bin/python"
    s13, s12 = STACKS["13"], STACKS["12"]
    fresh = install_commands(s13, py, "dev", True, ["constraints.txt"], {"torch": None, "onnxruntime": None})
    assert fresh[0] == [py, "-m", "pip", "install", "torch==2.14.1", "torchvision==0.29.1"]
    assert fresh[-1] == [py, "-m", "pip", "install", "-c", "constraints.txt", "-c", "constraints-gpu.txt", "-e", ".[dev]",
                         "onnxruntime-gpu[cuda,cudnn]==1.31.1", "tensorrt-cu13>=10.13.2,<11"]
    assert len(fresh) == 2
    # `make setup` ran first (CPU onnxruntime), or an older setup-gpu left the cu126 build: replaced, not "satisfied"
    old = install_commands(s13, py, "dev", False, [], {"torch": "2.14.1+cu126", "onnxruntime": "1.32.0"})
    assert old[0][3:] == ["install", "--force-reinstall", "--no-deps", "torch==2.14.1", "torchvision==0.29.1"]
    assert [py, "-m", "pip", "uninstall", "-y", "onnxruntime"] in old and "tensorrt-cu13>=10.13.2,<11" not in old[-1]
    for same in ("2.14.1", "2.14.1+cu130"):  # PyPI's CUDA 13 build, or the same build from PyTorch's index: kept
        assert len(install_commands(s13, py, "dev", True, [], {"torch": same})) == 2
    assert "--force-reinstall" in install_commands(s13, py, "dev", True, [], {"torch": "2.14.1+cpu"})[0]
    assert "--force-reinstall" in install_commands(s13, py, "dev", True, [], {"torch": "2.13.0"})[0]
    cu12 = install_commands(s12, py, "dev", True, [], {"torch": "2.14.1"})
    assert "--force-reinstall" in cu12[0] and cu12[0][-2:] == ["--index-url", "https://download.pytorch.org/whl/cu126"]
    assert "onnxruntime-gpu[cuda,cudnn]==1.26.0" in cu12[-1] and "constraints-gpu-cu12.txt" in cu12[-1]


def test_plan_is_a_dry_run_report_of_the_whole_stack(tmp_path):
    cmd = plan_command(STACKS["12"], "py", "dev", True, ["constraints.txt"], tmp_path / "r.json")
    assert cmd[:4] == ["py", "-m", "pip", "install"] and {"--dry-run", "--ignore-installed", "--report"} <= set(cmd)
    assert cmd[cmd.index("--report") + 1] == str(tmp_path / "r.json")
    assert ["--extra-index-url", "https://download.pytorch.org/whl/cu126"] == cmd[cmd.index("--extra-index-url"):][:2]
    assert {"torch==2.14.1+cu126", "onnxruntime-gpu[cuda,cudnn]==1.26.0", "tensorrt-cu12>=10.13.2,<11", ".[dev]"} <= set(cmd)
    assert "tensorrt-cu13-bindings>=10.13.2,<11" in gpu_stack.trt_bindings_command(STACKS["13"], "py", tmp_path / "t")


def _fake_pip(reports: list, outputs: list):
    """subprocess.run stand-in: writes the next canned report to --report and returns the next (rc, stderr)."""
    def run(cmd, capture_output=True, text=True):
        rc, err = outputs.pop(0)
        if rc == 0:
            Path(cmd[cmd.index("--report") + 1]).write_text(json.dumps(reports.pop(0)))
        return subprocess.CompletedProcess(cmd, rc, "", err)
    return run


def test_run_plan_checks_and_writes_pins(tmp_path, monkeypatch, capsys):
    out = tmp_path / "constraints-gpu.txt"
    monkeypatch.setattr(gpu_stack.subprocess, "run", _fake_pip([_report(TORCH_CU13, ORT_1311, *TRT_10)], [(0, "")]))
    assert gpu_stack.run_plan(STACKS["13"], "py", "dev", True, [], out) == 0
    assert "torch 2.14.1 (CUDA 13)" in capsys.readouterr().out
    assert "onnxruntime-gpu==1.31.1\ntensorrt-cu13==10.16.1.11\n" in out.read_text()
    # TensorRT's libs wheel is a stub fetching from NVIDIA's index: resolve the rest, then the bindings alone
    monkeypatch.setattr(gpu_stack.subprocess, "run", _fake_pip(
        [_report(TORCH_CU13, ORT_1311), _report(TRT_10[2])],
        [(1, "The installation of tensorrt-cu13-libs failed ... https://pypi.nvidia.com/"), (0, ""), (0, "")]))
    assert gpu_stack.run_plan(STACKS["13"], "py", "dev", True, [], None) == 0
    assert "pypi.nvidia.com" in capsys.readouterr().out
    monkeypatch.setattr(gpu_stack.subprocess, "run", _fake_pip([_report(TORCH_CU126, ORT_1311, *TRT_10)], [(0, "")]))
    assert gpu_stack.run_plan(STACKS["13"], "py", "dev", True, [], out) == 1
    assert "FAILED: torch 2.14.1+cu126 is built for CUDA 12" in capsys.readouterr().err


def test_pins_in_pyproject_and_constraints_match_the_table():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["ort-gpu"] == [STACKS["13"].ort] and extras["trt"] == [STACKS["13"].trt]
    for stack in STACKS.values():
        pins = dict(line.split("==") for line in (REPO / stack.constraints).read_text().splitlines()
                    if line and not line.startswith("#"))
        assert pins["onnxruntime-gpu"] == stack.ort.split("==")[1] and f"torch=={pins['torch']}" == stack.torch[0]
        assert pins[f"tensorrt-cu{stack.cuda}"].startswith("10.")
        assert {name_major(n) for n in pins} <= {None, stack.cuda}, pins


def test_makefile_runs_the_stack_script():
    def make(*args):
        return subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
    dry = make("setup-gpu", "DRY_RUN=1")
    assert "export/gpu_stack.py plan --cuda 13" in dry and "install" not in dry.replace("gpu_stack.py plan", "")
    assert make("gpu-plan", "CUDA=12").count("gpu_stack.py plan --cuda 12") == 1
    real = make("setup-gpu", "CUDA=12", "TRT=0")
    assert "gpu_stack.py install --cuda 12 -c constraints.txt --no-trt" in real
    assert "-m dreamfleet.export.gpu_verify --cuda 12 --no-trt" in real and "cu126" not in real  # one table, in Python
    assert gpu_stack.main(["plan", "--cuda", "11"]) == 2


def _found(torch_cuda="13.0", ort_cuda="13.0", trt=("10.16.1.11", "tensorrt-cu13-libs"), cpu_wheel=None):
    found = {"torch": dict(version="2.14.1", cuda=torch_cuda),
             "onnxruntime": dict(version="1.31.1", cuda=ort_cuda, cpu_wheel=cpu_wheel, gpu_wheel="1.31.1")}
    if trt:
        found["tensorrt"] = dict(version=trt[0], package=trt[1], cuda=name_major(trt[1]))
    return found


def test_installed_stack_check():
    s13 = STACKS["13"]
    assert stack_problems(_found(), s13, want_trt=True) == []
    (mixed,) = stack_problems(_found(torch_cuda="12.6"), s13, True)
    assert "CUDA majors differ: torch CUDA 12, onnxruntime-gpu CUDA 13" in mixed
    assert "CPU build" in stack_problems(_found(ort_cuda=None), s13, True)[0]
    assert "both onnxruntime 1.32.0 and onnxruntime-gpu" in stack_problems(_found(cpu_wheel="1.32.0"), s13, True)[0]
    trt11 = stack_problems(_found(trt=("11.4.0.106", "tensorrt-cu13-libs")), s13, True)
    assert trt11 and "libnvinfer.so.10" in trt11[0] and "--ort-trt will refuse" in trt11[0]
    assert "TensorRT is not installed" in stack_problems(_found(trt=None), s13, True)[0]
    assert stack_problems(_found(trt=None), s13, False) == []
    assert "CPU build" in stack_problems(_found(torch_cuda=None), s13, False)[0]


@pytest.mark.gpu
def test_setup_gpu_check_on_a_gpu_machine():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    done = subprocess.run([sys.executable, "-m", "dreamfleet.export.gpu_verify", "--cuda",
                           (torch.version.cuda or "13").split(".")[0]], capture_output=True, text=True)
    assert done.returncode == 0 and "gpu stack: OK" in done.stdout, done.stdout + done.stderr


def test_install_runs_the_commands_and_names_the_failure(monkeypatch, capsys):
    ran = []

    def run(cmd):
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 1 if STACKS["13"].trt in cmd else 0)

    monkeypatch.setattr(gpu_stack.subprocess, "run", run)
    monkeypatch.setattr(gpu_stack, "installed_version", {"torch": "2.14.1+cu126", "onnxruntime": "1.32.0"}.get)
    assert gpu_stack.main(["install", "--cuda", "13", "-c", "constraints.txt"]) == 1
    assert [c[3] for c in ran] == ["install", "install", "uninstall", "install"]  # forced torch, deps, CPU ORT out
    assert "make setup-gpu TRT=0" in capsys.readouterr().err
