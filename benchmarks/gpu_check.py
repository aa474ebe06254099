"""``make gpu-check``: on the first machine with a GPU, evidence within minutes, in one command.

1. the ``gpu``-marked tests (every CUDA-only path: CUDA graphs, transfers, bf16, ONNX Runtime
   CUDA with I/O binding and graphs, TensorRT engines), 2. ``bench --full`` on CUDA for eager,
   compile (``--compile-mode auto`` = CUDA graphs), onnxruntime and, when installed, tensorrt,
   rows written under ``benchmarks/results/gpu/<device>/``, 3. a short table of the measured
   images/s beside the **simulated** rows of ``results/simulated_<device>.jsonl`` for the closest
   simulated device. Exit status: non-zero when no CUDA device exists or a step failed.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def slug(name: str) -> str:
    return "".join(c.lower() if c.isalnum() else "-" for c in name).strip("-")


def simulated_key(device_name: str) -> str:
    for key in ("h200", "h100", "a100", "l4"):
        if key in device_name.lower():
            return key
    return "h100"


def compare_table(measured: list[dict], simulated: list[dict]) -> str:
    sim = {(r["model"], r["setting"]): r for r in simulated}
    setting = {"eager": "eager", "compile": "fused", "tensorrt": "fused", "onnxruntime": "graphs"}
    lines = ["| model | backend | prec | batch | measured images/s | simulated setting | simulated images/s "
             "(device-bound) |", "|---|---|---|---|---|---|---|"]
    for r in measured:
        if r.get("status") != "ok":
            continue
        s = sim.get((r["model"], setting.get(r["backend"], "eager")))
        pred = f"{s['predicted_images_per_s']} ({s['device_bound_images_per_s']})" if s else "-"
        lines.append(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['batch_size']} | {r['images_per_s']:.1f} "
                     f"| {s['setting'] + ' ' + s['precision'] if s else '-'} | {pred} |")
    return "\n".join(lines)


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu-check needs a CUDA device; torch sees none (torch.version.cuda = "
              f"{torch.version.cuda}). Install with `make setup-gpu` on a machine with an NVIDIA GPU.", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0)
    out = RESULTS / "gpu" / slug(name)
    status = 0
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-ra"], cwd=REPO)
    status |= tests.returncode
    backends = ["eager", "compile", "onnxruntime"] + (["tensorrt"] if importlib.util.find_spec("tensorrt") else [])
    bench = subprocess.run([sys.executable, "-m", "dreamfleet.cli", "bench", "--full", "--device", "cuda",
                            "--backends", ",".join(backends), "--out", str(out), "--no-chart"], cwd=REPO)
    status |= bench.returncode
    rows_path = out / "cuda_full.jsonl"
    measured = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.is_file() else []
    sim_path = RESULTS / f"simulated_{simulated_key(name)}.jsonl"
    simulated = [json.loads(line) for line in sim_path.read_text().splitlines()] if sim_path.is_file() else []
    print(f"\n{name}: measured (this run) vs simulated ({sim_path.name})\n")
    print(compare_table(measured, simulated))
    print(f"\nrows: {rows_path}; gpu tests exit {tests.returncode}; bench exit {bench.returncode}")
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main())
