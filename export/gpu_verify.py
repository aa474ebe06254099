"""``make setup-gpu``'s last step: check the GPU stack that is installed, not the one that was asked for.

Prints torch's CUDA, the CUDA onnxruntime-gpu was built for (``build_and_package_info.cuda_version``) and
TensorRT's version, then fails (exit 1, one line per problem) when:

- their CUDA majors differ from each other or from the stack's (``export.gpu_stack.STACKS``);
- the CPU ``onnxruntime`` wheel shadows ``onnxruntime-gpu``, or TensorRT is not major 10 (ORT's provider);
- a session that asked for CUDA (and TensorRT) does not list it in ``session.get_providers()`` -- ORT's silent
  CPU fallback when the CUDA libraries do not load -- or no CUDA device is visible at all.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .gpu_stack import ORT_TRT_MAJOR, Stack, get_stack, installed_version, name_major


def installed_stack() -> dict[str, dict]:
    """{torch, onnxruntime, tensorrt: {version, cuda, ...}} of what this Python imports (tensorrt: pip metadata)."""
    import torch

    from .ort_session import import_ort, installed_tensorrt, ort_build_cuda

    found = {"torch": dict(version=torch.__version__, cuda=torch.version.cuda)}
    try:
        ort = import_ort()
        found["onnxruntime"] = dict(version=ort.__version__, cuda=ort_build_cuda(ort),
                                    cpu_wheel=installed_version("onnxruntime"), gpu_wheel=installed_version("onnxruntime-gpu"))
    except ImportError:
        found["onnxruntime"] = dict(version=None, cuda=None)
    trt = installed_tensorrt()
    if trt:
        found["tensorrt"] = dict(version=trt[0], package=trt[1], cuda=name_major(trt[1]))
    return found


def major(cuda: str | None) -> str | None:
    return cuda.split(".")[0] if cuda else None


def stack_problems(found: dict[str, dict], stack: Stack, want_trt: bool) -> list[str]:
    """Mismatches between what is installed and ``stack``: one CUDA major, GPU wheels, TensorRT 10."""
    problems = []
    torch_cuda, ort = found["torch"]["cuda"], found["onnxruntime"]
    if torch_cuda is None:
        problems.append(f"torch {found['torch']['version']} is a CPU build; make setup-gpu installs {stack.torch[0]}")
    if ort.get("version") is None:
        problems.append(f"onnxruntime-gpu is not installed ({stack.ort})")
    elif ort.get("cuda") is None:
        problems.append(f"onnxruntime {ort['version']} is the CPU build; pip uninstall onnxruntime, then install {stack.ort}")
    elif ort.get("cpu_wheel") and ort.get("gpu_wheel"):
        problems.append(f"both onnxruntime {ort['cpu_wheel']} and onnxruntime-gpu {ort['gpu_wheel']} are installed "
                        "(they share the module `onnxruntime`): pip uninstall -y onnxruntime onnxruntime-gpu, then make setup-gpu")
    trt = found.get("tensorrt")
    if want_trt and trt is None:
        problems.append(f"TensorRT is not installed ({stack.trt}; TRT=0 leaves it out)")
    majors = {"torch": major(torch_cuda), "onnxruntime-gpu": major(ort.get("cuda"))}
    if trt:
        majors[trt["package"]] = trt["cuda"]
        if int(trt["version"].split(".")[0]) != ORT_TRT_MAJOR:
            problems.append(f"TensorRT {trt['version']}: ONNX Runtime's TensorRT provider needs libnvinfer.so."
                            f"{ORT_TRT_MAJOR} ({stack.trt}); --ort-trt will refuse")
    wrong = {name: m for name, m in majors.items() if m is not None and m != stack.cuda}
    if wrong:
        problems.append("CUDA majors differ: " + ", ".join(f"{n} CUDA {m}" for n, m in majors.items() if m)
                        + f" (the stack is CUDA {stack.cuda}; make setup-gpu CUDA={stack.cuda} reinstalls it)")
    return problems


def tiny_model(path: Path) -> Path:
    """A one-Relu ONNX file: enough for ORT to place a node on the provider."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def session_problems(want_trt: bool, device: str = "cuda") -> tuple[list[str], list[str]]:
    """(report lines, problems) of real sessions asking for CUDA (and TensorRT) on ``device``."""
    import torch

    from .ort_session import MissingProvider, make_session

    if not torch.cuda.is_available():
        return [], ["no CUDA device visible to torch: an NVIDIA GPU and driver are needed (CUDA 13: r580 or newer; "
                    "make setup-gpu CUDA=12 for r535+)"]
    lines, problems = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_model(Path(tmp) / "probe.onnx")
        for trt in (False, True) if want_trt else (False,):
            try:
                session = make_session(path, device, use_trt_provider=trt)
                lines.append(f"session ({'TensorRT+' if trt else ''}CUDA asked): {session.get_providers()}")
            except (MissingProvider, RuntimeError, ImportError) as exc:
                problems.append(str(exc))
    return lines, problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_verify", description="check the installed GPU stack")
    p.add_argument("--cuda", default="13", help="the stack's CUDA major (13 or 12)")
    p.add_argument("--no-trt", dest="trt", action="store_false", help="TensorRT was left out")
    args = p.parse_args(argv)
    stack = get_stack(args.cuda)
    found = installed_stack()
    trt = found.get("tensorrt") or {}
    ort = found["onnxruntime"]
    print(f"torch {found['torch']['version']}: CUDA {found['torch']['cuda'] or 'none (CPU build)'}")
    print(f"onnxruntime {ort['version']}: " + (f"built for CUDA {ort['cuda']}" if ort["cuda"] else "CPU build"))
    print(f"TensorRT {trt.get('version', 'not installed')}" + (f" ({trt['package']})" if trt else ""))
    problems = stack_problems(found, stack, args.trt)
    if not problems:
        lines, problems = session_problems(args.trt)
        print("\n".join(lines))
    for problem in problems:
        print(f"gpu stack: FAILED: {problem}", file=sys.stderr)
    if not problems:
        print(f"gpu stack: OK (CUDA {stack.cuda}; NVIDIA driver {stack.driver})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
