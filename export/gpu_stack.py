"""The GPU stack: which torch, ONNX Runtime and TensorRT builds go together, how pip installs them, and the check.

One table (``STACKS``) names, per CUDA major, the torch build, ``onnxruntime-gpu`` and TensorRT that share it:

- CUDA 13 (default): PyPI's torch 2.14.1 (a CUDA 13.0 build), ``onnxruntime-gpu==1.31.1`` (CUDA 13.0 since
  1.27) and TensorRT 10 for CUDA 13 -- ORT 1.31's TensorRT execution provider links ``libnvinfer.so.10``, so
  TensorRT 11 (what ``pip install tensorrt`` resolves to) would leave ``--ort-trt`` without a TensorRT;
- CUDA 12 (older drivers): the cu126 torch build, ``onnxruntime-gpu==1.26.0`` (the last CUDA 12 wheel) and
  TensorRT 10 for CUDA 12.

``make setup-gpu`` runs this file as a script (stdlib only: it runs before anything is installed):
``install`` forces the stack's torch build whatever was there before, swaps the CPU ``onnxruntime`` for
``onnxruntime-gpu`` and installs the rest; ``plan`` (``make gpu-plan``) runs ``pip install --dry-run
--report`` and checks that everything resolved shares one CUDA major. ``export.gpu_verify`` checks the
installed stack at run time (versions, and a CUDA session that really got CUDA).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ORT_TRT_MAJOR = 10  # onnxruntime-gpu's TensorRT execution provider links libnvinfer.so.10


@dataclass(frozen=True)
class Stack:
    cuda: str  # the CUDA major every part is built for
    torch: tuple[str, ...]  # exact torch / torchvision builds (a local label where the index adds one)
    torch_index: str | None  # pip index of those builds (None: PyPI)
    ort: str  # onnxruntime-gpu, with the extras that pull its CUDA/cuDNN wheels
    trt: str  # TensorRT (libs + Python bindings) for this CUDA major, major 10 for ORT's provider
    driver: str  # the NVIDIA driver branch this CUDA major needs
    constraints: str  # pins of everything GPU-specific the stack resolved to (a file in the repository)

    @property
    def torch_version(self) -> str:
        return self.torch[0].split("==", 1)[1]


STACKS: dict[str, Stack] = {
    "13": Stack("13", ("torch==2.14.1", "torchvision==0.29.1"), None, "onnxruntime-gpu[cuda,cudnn]==1.31.1",
                "tensorrt-cu13>=10.13.2,<11", "r580 or newer", "constraints-gpu.txt"),
    "12": Stack("12", ("torch==2.14.1+cu126", "torchvision==0.29.1+cu126"), "https://download.pytorch.org/whl/cu126",
                "onnxruntime-gpu[cuda,cudnn]==1.26.0", "tensorrt-cu12>=10.13.2,<11", "r535 or newer",
                "constraints-gpu-cu12.txt"),
}
GPU_PACKAGE = re.compile(r"^(torch|torchvision|triton|onnxruntime-gpu|tensorrt.*|nvidia-.*|cuda-.*)$")


def get_stack(cuda: str) -> Stack:
    try:
        return STACKS[str(cuda)]
    except KeyError:
        raise ValueError(f"no GPU stack for CUDA {cuda!r}; valid: {', '.join(STACKS)}") from None


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def name_major(name: str) -> str | None:
    """'nvidia-cudnn-cu13' / 'tensorrt_cu12_libs' -> '13' / '12'; None without a -cuNN part."""
    m = re.search(r"-cu(\d{2})(?:-|$)", norm(name))
    return m.group(1) if m else None


def local_major(version: str) -> str | None:
    """'2.14.1+cu126' -> '12'; '2.14.1+cpu' -> 'cpu'; no local label -> None."""
    label = version.partition("+")[2]
    if label == "cpu":
        return "cpu"
    m = re.fullmatch(r"cu(\d{2})\d", label)
    return m.group(1) if m else None


def requires_major(requires: list[str]) -> str | None:
    """The CUDA major a wheel's Requires-Dist names: cuda-toolkit==13.x, nvidia-cuda-runtime~=13.0, *-cu13."""
    majors = set()
    for req in requires:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(?:[~=]=\s*(\d+))?", req)
        if not m:
            continue
        name = norm(m.group(1))
        if name_major(name):
            majors.add(name_major(name))
        elif name in ("cuda-toolkit", "nvidia-cuda-runtime") and m.group(3):
            majors.add(m.group(3))
    return majors.pop() if len(majors) == 1 else None


def resolved_parts(report: dict) -> dict[str, dict]:
    """{component: {package, version, cuda}} for torch, onnxruntime-gpu and TensorRT in a pip --report."""
    parts: dict[str, dict] = {}
    for item in report.get("install", []):
        meta = item["metadata"]
        name, version = norm(meta["name"]), meta["version"]
        requires = meta.get("requires_dist") or []
        if name in ("torch", "onnxruntime-gpu", "onnxruntime"):
            cuda = local_major(version) or requires_major(requires)
            parts[name] = dict(package=name, version=version, cuda=cuda or ("cpu" if name == "onnxruntime" else None))
        elif name.startswith("tensorrt") and name_major(name):
            key = "tensorrt"
            if key not in parts or name.endswith("libs"):
                parts[key] = dict(package=name, version=version, cuda=name_major(name))
    return parts


def check_resolution(report: dict, stack: Stack, want_trt: bool = True) -> list[str]:
    """Problems (empty: fine) of a ``pip install --dry-run --report`` against ``stack``: one CUDA major for all."""
    parts, problems = resolved_parts(report), []
    if "onnxruntime" in parts:
        problems.append("the CPU package onnxruntime resolved beside onnxruntime-gpu (both install the module "
                        "`onnxruntime` and break it); uninstall onnxruntime")
    for comp in ("torch", "onnxruntime-gpu") + (("tensorrt",) if want_trt else ()):
        part = parts.get(comp)
        if part is None:
            problems.append(f"{comp} is not in the resolution")
        elif part["cuda"] != stack.cuda:
            problems.append(f"{part['package']} {part['version']} is built for CUDA {part['cuda'] or '?'}, "
                            f"the stack for CUDA {stack.cuda}")
    trt = parts.get("tensorrt")
    if trt and int(trt["version"].split(".")[0]) != ORT_TRT_MAJOR:
        problems.append(f"{trt['package']} {trt['version']}: ONNX Runtime's TensorRT provider needs TensorRT "
                        f"{ORT_TRT_MAJOR} (libnvinfer.so.{ORT_TRT_MAJOR})")
    others = sorted({(norm(i["metadata"]["name"]), name_major(i["metadata"]["name"])) for i in report.get("install", [])
                     if name_major(i["metadata"]["name"]) not in (None, stack.cuda)})
    problems += [f"{name} is a CUDA {major} package in a CUDA {stack.cuda} stack" for name, major in others]
    return problems


def describe_resolution(report: dict) -> str:
    parts = resolved_parts(report)
    return "; ".join(f"{p['package']} {p['version']} (CUDA {p['cuda'] or '?'})" for p in parts.values())


def gpu_pins(report: dict) -> list[str]:
    """'name==version' of every GPU-specific package of a resolution (the constraints file's lines)."""
    pins = {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in report.get("install", [])}
    for name, version in list(pins.items()):  # TensorRT's meta, libs and bindings wheels are released in lockstep
        if name.startswith("tensorrt-cu") and name.endswith("-bindings"):
            meta = name[: -len("-bindings")]
            pins.setdefault(meta, version)
            pins.setdefault(meta + "-libs", version)
    return [f"{name}=={version}" for name, version in sorted(pins.items()) if GPU_PACKAGE.match(name)]


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def torch_matches(installed: str, stack: Stack) -> bool:
    """The installed torch is the stack's build: the same version string, or the same version built for the
    stack's CUDA major (``2.14.1+cu130`` from PyTorch's index is PyPI's CUDA 13 ``2.14.1``)."""
    base, want = installed.partition("+")[0], stack.torch_version.partition("+")[0]
    return installed == stack.torch_version or (base == want and local_major(installed) == stack.cuda)


def torch_commands(stack: Stack, pip: list[str], installed_torch: str | None) -> list[list[str]]:
    """Install the stack's torch build; force it when another build of the same version is there (history)."""
    index = ["--index-url", stack.torch_index] if stack.torch_index else []
    cmds = []
    if installed_torch is not None and not torch_matches(installed_torch, stack):  # +cu126 vs PyPI's, +cpu, other
        cmds.append(pip + ["install", "--force-reinstall", "--no-deps", *stack.torch, *index])
    cmds.append(pip + ["install", *stack.torch, *index])
    return cmds


def install_commands(stack: Stack, python: str, extras: str, trt: bool, constraints: list[str],
                     installed: dict[str, str | None]) -> list[list[str]]:
    """The pip commands ``make setup-gpu`` runs, in order (``installed``: package -> installed version)."""
    pip = [python, "-m", "pip"]
    cons = [arg for c in constraints + [stack.constraints] for arg in ("-c", c)]
    cmds = torch_commands(stack, pip, installed.get("torch"))
    if installed.get("onnxruntime"):  # the CPU wheel and the GPU wheel both install the module `onnxruntime`
        cmds.append(pip + ["uninstall", "-y", "onnxruntime"])
    cmds.append(pip + ["install", *cons, "-e", f".[{extras}]", stack.ort] + ([stack.trt] if trt else []))
    return cmds


def plan_command(stack: Stack, python: str, extras: str, trt: bool, constraints: list[str], report: Path,
                 trt_bindings_only: bool = False) -> list[str]:
    """``pip install --dry-run --report``: what a fresh machine would get, resolved in one go, installing nothing."""
    index = ["--extra-index-url", stack.torch_index] if stack.torch_index else []
    cons = [arg for c in constraints for arg in ("-c", c)]
    trt_specs = [stack.trt] if trt and not trt_bindings_only else []
    return [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
            *index, *cons, *stack.torch, f".[{extras}]", stack.ort, *trt_specs]


def trt_bindings_command(stack: Stack, python: str, report: Path) -> list[str]:
    """TensorRT's Python bindings alone (a real wheel on PyPI; the libs wheel is a stub that downloads from NVIDIA)."""
    spec = stack.trt.replace(f"tensorrt-cu{stack.cuda}", f"tensorrt-cu{stack.cuda}-bindings", 1)
    return [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet", "--report",
            str(report), spec]


def run_plan(stack: Stack, python: str, extras: str, trt: bool, constraints: list[str],
             write_constraints: Path | None = None) -> int:
    """Resolve the stack as on a fresh machine; print what resolved and exit 1 on a CUDA-major mismatch."""
    with tempfile.TemporaryDirectory() as tmp:
        report_path, trt_path = Path(tmp) / "report.json", Path(tmp) / "trt.json"
        done = subprocess.run(plan_command(stack, python, extras, trt, constraints, report_path),
                              capture_output=True, text=True)
        note = ""
        if done.returncode and trt and "pypi.nvidia.com" in done.stdout + done.stderr:
            # tensorrt-cuNN-libs is a stub that fetches its wheel from NVIDIA's index: resolve without it
            note = (f"TensorRT libs not resolved here (tensorrt-cu{stack.cuda}-libs downloads from pypi.nvidia.com, "
                    "unreachable); its bindings resolved alone")
            done = subprocess.run(plan_command(stack, python, extras, trt, constraints, report_path, True),
                                  capture_output=True, text=True)
            if not done.returncode:
                done = subprocess.run(trt_bindings_command(stack, python, trt_path), capture_output=True, text=True)
        if done.returncode:
            tail = [line for line in (done.stderr or done.stdout).splitlines() if line.strip() and "is ignored" not in line]
            print(f"gpu plan (CUDA {stack.cuda}): pip could not resolve the stack:\n  " + "\n  ".join(tail[-8:]),
                  file=sys.stderr)
            return 1
        report = json.loads(report_path.read_text())
        if trt_path.is_file():
            report["install"] += json.loads(trt_path.read_text())["install"]
    problems = check_resolution(report, stack, want_trt=trt)
    print(f"gpu plan (CUDA {stack.cuda}, driver {stack.driver}): {describe_resolution(report)}")
    if note:
        print(f"gpu plan: note: {note}")
    if write_constraints is not None and not problems:
        write_constraints.write_text(f"# GPU stack for CUDA {stack.cuda}, resolved by `make gpu-plan` "
                                     "(export/gpu_stack.py); do not edit by hand\n" + "\n".join(gpu_pins(report)) + "\n")
        print(f"gpu plan: wrote {write_constraints}")
    for p in problems:
        print(f"gpu plan: FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_stack", description="install or dry-run-resolve dreamfleet's GPU stack")
    p.add_argument("action", choices=("install", "plan"))
    p.add_argument("--cuda", default="13", help=f"CUDA major of the stack; valid: {', '.join(STACKS)} (default: 13)")
    p.add_argument("--extras", default="dev,cluster,charts", help="dreamfleet extras installed beside the stack")
    p.add_argument("--no-trt", dest="trt", action="store_false", help="leave TensorRT out")
    p.add_argument("-c", "--constraint", action="append", default=[], help="pip constraints file (repeatable)")
    p.add_argument("--write-constraints", type=Path, default=None, help="plan: write the resolved GPU pins here")
    args = p.parse_args(argv)
    try:
        stack = get_stack(args.cuda)
    except ValueError as exc:
        print(f"gpu_stack: error: {exc}", file=sys.stderr)
        return 2
    if args.action == "plan":
        return run_plan(stack, sys.executable, args.extras, args.trt, args.constraint, args.write_constraints)
    installed = {name: installed_version(name) for name in ("torch", "onnxruntime")}
    for cmd in install_commands(stack, sys.executable, args.extras, args.trt, args.constraint, installed):
        print("+ " + " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode:
            hint = (f"; tensorrt-cu{stack.cuda}-libs downloads its wheel from pypi.nvidia.com: where that is "
                    "unreachable, make setup-gpu TRT=0 installs the rest") if args.trt and stack.trt in cmd else ""
            print(f"gpu_stack: `{' '.join(cmd[3:5])}` failed (CUDA {stack.cuda} stack); see pip's message above{hint}",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
