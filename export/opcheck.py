"""The TensorRT 10 operator check: every node of a gradient graph against the allow-list in the repo.

``trt_ops.json`` (next to this file) lists the ONNX operators TensorRT 10's ONNX parser
accepts, with the restrictions that bite gradient graphs: MaxPool without its ``Indices``
output, ScatterElements/ScatterND without a reduction, 2-D/3-D pooling only, and
operators that are out (MaxUnpool, ...). :func:`trt_problems` returns one line per
offending node; :func:`assert_trt_compatible` raises with all of them.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

ALLOW_LIST = Path(__file__).resolve().parent / "trt_ops.json"


def load_allow_list(path: str | Path = ALLOW_LIST) -> dict:
    with open(path) as fh:
        return json.load(fh)


def _attr(node, name: str):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def _spatial_dims(node, initializers: dict) -> int | None:
    """Number of spatial dims of a pooling / convolution node (from kernel_shape or the weight)."""
    ks = _attr(node, "kernel_shape")
    if ks is not None:
        return len(ks)
    if len(node.input) > 1 and node.input[1] in initializers:
        return len(initializers[node.input[1]].dims) - 2
    return None


def trt_problems(model, allow: dict | None = None) -> list[str]:
    """Every reason TensorRT 10's ONNX parser would reject ``model`` (ModelProto or path); [] when none."""
    import onnx

    if not hasattr(model, "graph"):
        model = onnx.load(str(model), load_external_data=False)
    allow = allow or load_allow_list()
    ops, banned = allow["ops"], allow.get("unsupported", {})
    problems: list[str] = []
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not allow["opset"]["min"] <= imp.version <= allow["opset"]["max"]:
            problems.append(f"opset {imp.version} outside TensorRT 10's range "
                            f"{allow['opset']['min']}..{allow['opset']['max']}")
    inits = {t.name: t for t in model.graph.initializer}

    def visit(graph) -> None:
        for node in graph.node:
            where = f"{node.op_type} node {node.name or node.output[0]!r}"
            if node.domain not in ("", "ai.onnx"):
                problems.append(f"{where}: custom domain {node.domain!r} needs a TensorRT plugin")
                continue
            if node.op_type in banned:
                problems.append(f"{where}: {banned[node.op_type]}")
                continue
            rule = ops.get(node.op_type)
            if rule is None:
                problems.append(f"{where}: not in the TensorRT 10 allow-list ({ALLOW_LIST.name})")
                continue
            outputs = [o for o in node.output if o]
            if "max_outputs" in rule and len(outputs) > rule["max_outputs"]:
                problems.append(f"{where}: {len(outputs)} outputs, at most {rule['max_outputs']} supported"
                                + (f" ({rule['why']})" if "why" in rule else ""))
            for name, bad_values in rule.get("forbid_attrs", {}).items():
                value = _attr(node, name)
                if isinstance(value, bytes):
                    value = value.decode()
                if value in bad_values:
                    problems.append(f"{where}: {name}={value!r} not supported" + (f" ({rule['why']})" if "why" in rule else ""))
            if "spatial_dims" in rule:
                nd = _spatial_dims(node, inits)
                if nd is not None and nd not in rule["spatial_dims"]:
                    problems.append(f"{where}: {nd}-D not supported (valid: {rule['spatial_dims']})")
            for a in node.attribute:  # subgraphs (If/Loop bodies)
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)

    visit(model.graph)
    return problems


def assert_trt_compatible(model) -> None:
    """Raise ValueError listing every node TensorRT 10 would reject."""
    problems = trt_problems(model)
    if problems:
        raise ValueError("graph is outside TensorRT 10's ONNX support:\n  " + "\n  ".join(problems))


__all__ = ["ALLOW_LIST", "assert_trt_compatible", "load_allow_list", "trt_problems"]
