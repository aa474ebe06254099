"""Writing the gradient graph to an ONNX file: metadata, the self parity check and the export cache.

The file's ``metadata_props`` record what the gradient *means*, so a backend can refuse a
file made for another job: model, layers (with weights), objective kind and channels,
input normalization, opset, compute precision and a sha256 of the truncated module's
weights (:func:`dreamfleet.engine.weights.state_hash`). :func:`export_gradient_onnx` writes
the file and, by default, checks it against PyTorch autograd with ONNX Runtime before it
reports success. :func:`cached_export` keeps exports under ``$DREAMFLEET_CACHE/onnx``
(default ``~/.cache/dreamfleet/onnx``) keyed by everything in the metadata.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch

from dreamfleet.engine.atomic import atomic_write
from dreamfleet.engine.build import DreamModel
from dreamfleet.engine.objectives import GUIDED_KINDS
from dreamfleet.engine.step import objective_and_grad
from dreamfleet.engine.weights import state_hash

from .cache import cache_dir
from .graph import INPUT_NAME, OUTPUT_NAMES, to_onnx, trace_gradient
from .ort_session import make_session

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
EXPORT_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: metadata keys that must match the job exactly
MATCH_KEYS = ("model", "layers", "objective", "channels", "mean", "std", "weights_sha256", "precision")
PARITY_REL_L2 = 1e-3  # fp32 graph vs fp32 autograd
PARITY_COSINE = 0.9999
#: half-precision graphs vs fp32 autograd: a sanity bound (no vanished or wrong gradient), not parity;
#: measured on vgg16: fp16 rel L2 0.014-0.027 / cosine 0.9996+, bf16 rel L2 0.043 / cosine 0.9991
HALF_TOLERANCE = {"fp16": (1e-1, 0.995), "bf16": (2.5e-1, 0.97)}


class ParityError(RuntimeError):
    """The exported graph's gradient does not match PyTorch autograd."""


def expected_metadata(dm: DreamModel, precision: str = "fp32", opset: int = 18) -> dict[str, str]:
    """What a gradient file for this dream model and precision must say about itself."""
    if dm.objective in GUIDED_KINDS:
        raise ValueError(f"objective {dm.objective!r} can't be exported (its guide features change per job); "
                         f"valid for export: l2, norm, channel")
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"unknown export precision {precision!r}; valid: {', '.join(EXPORT_PRECISIONS)}")
    channels = getattr(dm.module.objective.terms[0], "channels", ())
    return {
        "dreamfleet.format": FORMAT_VERSION,
        "model": dm.spec.name,
        "layers": ",".join(f"{name}:{w:g}" for name, w in dm.layers),
        "objective": dm.objective,
        "channels": ",".join(str(c) for c in channels),
        "mean": ",".join(f"{v:g}" for v in dm.spec.mean),
        "std": ",".join(f"{v:g}" for v in dm.spec.std),
        "weights_sha256": state_hash(dm.module),
        "weights_source": json.dumps(dm.weights_info, sort_keys=True),
        "precision": precision,
        "opset": str(opset),
        "inputs": f"{INPUT_NAME}[N,3,H,W] float32, model-normalized",
        "outputs": f"{OUTPUT_NAMES[0]}[N], {OUTPUT_NAMES[1]}[N,3,H,W] float32",
        "torch": torch.__version__,
    }


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (weights are not loaded)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def check_metadata(found: dict[str, str], expected: dict[str, str], path: str | Path = "") -> None:
    """Raise ValueError naming every field where the file and the job disagree."""
    if "dreamfleet.format" not in found:
        raise ValueError(f"{path or 'ONNX file'} is not a dreamfleet gradient graph (no dreamfleet metadata); "
                         f"make one with: dreamfleet export --model ... -o FILE")
    bad = [f"{k}: file has {found.get(k)!r}, job needs {expected[k]!r}" for k in MATCH_KEYS
           if found.get(k) != expected[k]]
    if bad:
        raise ValueError(f"ONNX gradient graph {path} does not match this job:\n  " + "\n  ".join(bad)
                         + "\nre-export it for this job (dreamfleet export) or drop --onnx to export automatically")


def export_gradient_onnx(dm: DreamModel, path: str | Path, precision: str = "fp32", opset: int = 18,
                         check: bool = True, check_shapes: tuple[tuple[int, int, int], ...] | None = None) -> dict:
    """Trace, translate, stamp and write the gradient graph; returns a report (parity figures included)."""
    meta = expected_metadata(dm, precision, opset)
    import onnx

    t0 = time.perf_counter()
    gm = trace_gradient(dm.module, compute_dtype=EXPORT_PRECISIONS[precision])
    shapes = check_shapes or ((2, max(64, dm.spec.min_size), max(72, dm.spec.min_size + 8)),)
    fx_parity = [_fx_parity(gm, dm, shape) for shape in shapes] if check and precision == "bf16" else []
    proto = to_onnx(gm, opset=opset)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path = Path(path)
    report = {"path": str(path), "seconds": round(time.perf_counter() - t0, 1), "nodes": len(proto.graph.node),
              "op_types": sorted({n.op_type for n in proto.graph.node}), "metadata": meta}

    def check_parity(tmp: Path) -> None:
        # ONNX Runtime CPU has no bf16 convolutions: a bf16 graph is checked as traced (torch runs it)
        report["parity"] = fx_parity or [parity(tmp, dm, shape, precision) for shape in shapes]
        failed = [p for p in report["parity"] if not p["ok"]]
        if failed:
            raise ParityError(f"exported gradient differs from PyTorch autograd: {failed}")

    # the file appears under its name only once it passed the parity check
    atomic_write(path, lambda fh: onnx.save(proto, fh), verify=check_parity if check else None)
    log.info("wrote %s (%d nodes) in %.1fs", path, len(proto.graph.node), time.perf_counter() - t0)
    return report


def parity(path: str | Path, dm: DreamModel, shape: tuple[int, int, int] = (2, 64, 72), precision: str = "fp32",
           seed: int = 0) -> dict:
    """ONNX Runtime (CPU) vs PyTorch autograd at one step on a random batch of ``shape`` = (N, H, W)."""

    n, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, h, w, generator=gen)  # [N,3,H,W], model-normalized
    sess = make_session(path, "cpu")
    obj, grad = (torch.from_numpy(a) for a in sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()}))
    ref_obj, ref_grad = objective_and_grad(dm.module.float(), x)
    figures = compare(obj, grad, ref_obj, ref_grad)
    tol_rel, tol_cos = (PARITY_REL_L2, PARITY_COSINE) if precision == "fp32" else HALF_TOLERANCE[precision]
    figures.update(shape=[n, 3, h, w], runtime="onnxruntime-cpu", ok=figures["rel_l2"] <= tol_rel and figures["cosine"] >= tol_cos,
                   tolerance={"rel_l2": tol_rel, "cosine": tol_cos})
    return figures


def _fx_parity(gm, dm: DreamModel, shape: tuple[int, int, int], seed: int = 0) -> dict:
    """The traced graph (decompositions included) run by torch vs autograd: the check for bf16 exports."""
    n, h, w = shape
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))  # [N,3,H,W]
    obj, grad = gm(x)
    figures = compare(obj, grad, *objective_and_grad(dm.module.float(), x))
    tol_rel, tol_cos = HALF_TOLERANCE["bf16"]
    figures.update(shape=[n, 3, h, w], runtime="torch (traced graph)", tolerance={"rel_l2": tol_rel, "cosine": tol_cos},
                   ok=figures["rel_l2"] <= tol_rel and figures["cosine"] >= tol_cos)
    return figures


def compare(obj: torch.Tensor, grad: torch.Tensor, ref_obj: torch.Tensor, ref_grad: torch.Tensor) -> dict:
    """Relative L2 and cosine of grad[N,3,H,W] vs ref (in fp64), and the objective's max relative error."""
    g, r = grad.double().flatten(), ref_grad.double().flatten()
    rel = ((g - r).norm() / r.norm().clamp_min(1e-300)).item()
    cos = (g @ r / (g.norm() * r.norm()).clamp_min(1e-300)).item()
    obj_rel = ((obj.double() - ref_obj.double()).abs().max() / ref_obj.double().abs().max().clamp_min(1e-300)).item()
    return {"rel_l2": rel, "cosine": cos, "objective_rel": obj_rel}


def cache_key(meta: dict[str, str]) -> str:
    keyed = {k: meta[k] for k in (*MATCH_KEYS, "opset", "torch", "dreamfleet.format")}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:20]


def cached_export(dm: DreamModel, precision: str = "fp32", opset: int = 18) -> Path:
    """The gradient file for this job, exported (and parity-checked) on first use."""
    meta = expected_metadata(dm, precision, opset)
    path = cache_dir() / f"{dm.spec.name}-{dm.objective}-{precision}-{cache_key(meta)}.onnx"
    if path.is_file():
        log.info("using cached gradient graph %s", path)
        return path
    log.info("exporting the gradient graph to %s (first use)", path)
    export_gradient_onnx(dm, path, precision=precision, opset=opset, check=True)
    return path


__all__ = ["EXPORT_PRECISIONS", "FORMAT_VERSION", "HALF_TOLERANCE", "MATCH_KEYS", "PARITY_COSINE", "PARITY_REL_L2",
           "ParityError", "cache_dir", "cache_key", "cached_export", "check_metadata", "compare", "expected_metadata",
           "export_gradient_onnx", "parity", "read_metadata"]
