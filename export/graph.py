"""Tracing the dream gradient into an ONNX graph: ``x[N,3,H,W] -> (objective[N], grad[N,3,H,W])``.

Owns the two steps between a ``DreamObjective`` and an in-memory ONNX model:

1. :func:`trace_gradient` traces ``torch.func.grad`` of the summed per-image objective
   (``DreamObjective.forward(x).sum()``, the engine's one definition) with
   ``make_fx(tracing_mode="symbolic")`` and :func:`export.decomp.decomposition_table`, so
   N, H and W stay symbolic and every backward op is already a forward op.
2. :func:`to_onnx` translates that FX graph node by node with the torch.onnx exporter's
   own aten->ONNX library (the translation stage of ``torch.onnx.export(dynamo=True)``),
   skipping the exporter's two extra re-traces (``torch.export`` and its decomposition
   pass), which cost minutes per model on symbolic pooling shapes; then runs the
   onnxscript optimizer and names the dynamic dims ``N``, ``H``, ``W``.
"""
from __future__ import annotations

import copy
import logging
import operator
import time

import torch
from torch import nn

from .decomp import decomposition_table

log = logging.getLogger(__name__)

INPUT_NAME = "x"
OUTPUT_NAMES = ("objective", "grad")
_EXAMPLE_SHAPE = (2, 3, 83, 91)  # distinct N, H, W so no two dims share a symbol


class GradientOfObjective(nn.Module):
    """x[N,3,H,W] -> (objective[N], d sum(objective) / dx [N,3,H,W]).

    ``compute_dtype`` (fp16/bf16) runs the feature module in that dtype and the objective in
    fp32 (like autocast): the graph's inputs and outputs stay fp32 while every tensor of the
    network has one explicit type (what a strongly typed TensorRT network needs).
    """

    def __init__(self, module: nn.Module, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        # a copy when the dtype changes: the caller's module stays as it was
        param = next(module.parameters(), None)
        same = param is None or param.dtype == compute_dtype
        self.module = module if same else copy.deepcopy(module).to(compute_dtype)
        self.compute_dtype = compute_dtype

    def objective(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N,3,H,W] fp32 -> [N] fp32
        if self.compute_dtype == torch.float32 or self.compute_dtype == x.dtype:
            return self.module(x)
        feats = self.module.features(x.to(self.compute_dtype))  # {layer: [N,C,h,w]} in compute dtype
        return self.module.objective({k: v.to(x.dtype) for k, v in feats.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def summed(inp: torch.Tensor):
            obj = self.objective(inp)  # [N]
            return obj.sum(), obj

        grad, obj = torch.func.grad(summed, has_aux=True)(x)
        return obj, grad


def trace_gradient(module: nn.Module, compute_dtype: torch.dtype = torch.float32,
                   io_dtype: torch.dtype = torch.float32) -> torch.fx.GraphModule:
    """Symbolic FX graph of :class:`GradientOfObjective`; parameters become constants."""
    import torch.fx.experimental._config as fx_config
    from torch.fx.experimental.proxy_tensor import make_fx

    fn = GradientOfObjective(module, compute_dtype).eval()
    example = torch.zeros(_EXAMPLE_SHAPE, dtype=io_dtype)  # [N,3,H,W]
    t0 = time.perf_counter()
    with fx_config.patch(use_duck_shape=False):
        gm = make_fx(torch.func.functionalize(fn, remove="mutations"), decomposition_table=decomposition_table(),
                     tracing_mode="symbolic", _allow_non_fake_inputs=True)(example)
    _clean(gm)
    _rewrite_channel_scatter(gm)
    log.info("traced the gradient graph: %d nodes in %.1fs", len(gm.graph.nodes), time.perf_counter() - t0)
    return gm


def _clean(gm: torch.fx.GraphModule) -> None:
    """Drop no-op nodes and give SymInt scalars to arithmetic as tensors (what the translator expects)."""
    aten = torch.ops.aten
    passthrough = {aten.detach_.default, aten.detach.default, aten.lift_fresh_copy.default, aten.alias.default,
                   aten.clone.default}
    scalar_to_tensor = {aten.div.Scalar: aten.div.Tensor, aten.mul.Scalar: aten.mul.Tensor,
                        aten.add.Scalar: aten.add.Tensor, aten.sub.Scalar: aten.sub.Tensor}
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in passthrough:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif node.target in scalar_to_tensor and isinstance(node.args[1], torch.fx.Node):
            dtype = node.args[0].meta["val"].dtype
            with gm.graph.inserting_before(node):
                as_float = gm.graph.call_function(operator.mul, (node.args[1], 1.0))
                as_float.meta["val"] = node.args[1].meta["val"] * 1.0
                t = gm.graph.call_function(aten.scalar_tensor.default, (as_float,), {"dtype": dtype})
                t.meta["val"] = torch.empty((), dtype=dtype)
            node.args = (node.args[0], t)
            node.target = scalar_to_tensor[node.target]
    gm.graph.eliminate_dead_code()
    gm.recompile()


def _rewrite_channel_scatter(gm: torch.fx.GraphModule) -> None:
    """Backward of ``a[:, [c1, c2, ...]]`` (index_put with accumulate -> ScatterND(add), which TensorRT
    rejects) -> ``base + ConvTranspose(grad, one-hot[k, C, 1, 1])``: exact, and duplicates still add up."""
    aten = torch.ops.aten
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.index_put.default:
            continue
        base, indices, values = node.args[:3]
        accumulate = node.args[3] if len(node.args) > 3 else node.kwargs.get("accumulate", False)
        if not (accumulate and len(indices) == 2 and indices[0] is None and indices[1].op == "get_attr"):
            raise NotImplementedError(f"index_put {node.format_node()} has no TensorRT-friendly rewrite "
                                      f"(only the channel objective's a[:, channels] is supported)")
        idx = getattr(gm, indices[1].target).tolist()  # the channel list, a real constant
        n_ch = base.meta["val"].shape[1]
        val = values.meta["val"]
        onehot = torch.zeros(len(idx), n_ch, 1, 1, dtype=val.dtype)  # [k, C, 1, 1]
        for j, c in enumerate(idx):
            onehot[j, c, 0, 0] = 1.0
        name = f"_channel_onehot_{node.name}"
        gm.register_buffer(name, onehot)
        with gm.graph.inserting_before(node):
            w = gm.graph.get_attr(name)
            w.meta["val"] = onehot
            spread = gm.graph.call_function(aten.convolution.default,
                                            (values, w, None, [1, 1], [0, 0], [1, 1], True, [0, 0], 1))
            spread.meta["val"] = node.meta["val"]  # [N, C, h, w]
            out = gm.graph.call_function(aten.add.Tensor, (base, spread))
            out.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def _lift_constants(gm: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """get_attr constants -> placeholders (the translator turns those into initializers)."""
    consts: dict[str, torch.Tensor] = {}
    by_storage: dict[tuple, torch.fx.Node] = {}  # forward and backward read the same weight: store it once
    first = next(iter(gm.graph.nodes))
    for node in list(gm.graph.nodes):
        if node.op != "get_attr":
            continue
        tensor = getattr(gm, node.target)
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        ph = by_storage.get(key) if tensor.numel() else None
        if ph is None:
            with gm.graph.inserting_before(first):
                ph = gm.graph.placeholder(f"c_{node.target}")
            ph.meta["val"] = tensor
            consts[ph.name] = tensor
            by_storage[key] = ph
        node.replace_all_uses_with(ph)
        gm.graph.erase_node(node)
    return consts


def to_onnx(gm: torch.fx.GraphModule, opset: int = 18, optimize: bool = True):
    """FX gradient graph -> ``onnx.ModelProto`` with input ``x[N,3,H,W]``, outputs objective[N], grad[N,3,H,W]."""
    import onnx_ir as ir
    from torch.onnx._internal.exporter import _core, _registration

    t0 = time.perf_counter()
    consts = _lift_constants(gm)
    registry = _registration.ONNXRegistry.from_torchlib(opset_version=opset)
    model = ir.Model(graph=ir.Graph([], [], nodes=[], name="dream_gradient", opset_imports={"": opset}),
                     ir_version=10, producer_name="dreamfleet", producer_version=torch.__version__)
    core_log = logging.getLogger("torch.onnx._internal.exporter._core")
    level = core_log.level
    core_log.setLevel(logging.ERROR)  # it warns once per node about missing nn_module_stack
    try:
        values = _core._translate_fx_graph(gm.graph, model, graph_like=model.graph, owned_graphs={},
                                           lower="at_conversion", registry=registry)
    finally:
        core_log.setLevel(level)
    for name, tensor in consts.items():
        value = values[name]
        model.graph.inputs.remove(value)
        value.const_value = _core.TorchTensor(tensor, name)
        model.graph.initializers[name] = value
    if len(model.graph.inputs) != 1 or len(model.graph.outputs) != 2:
        raise RuntimeError(f"unexpected gradient graph signature: {len(model.graph.inputs)} inputs, "
                           f"{len(model.graph.outputs)} outputs (want 1 and 2)")
    model.graph.inputs[0].name = INPUT_NAME
    for value, name in zip(model.graph.outputs, OUTPUT_NAMES):
        value.name = name
    t1 = time.perf_counter()
    if optimize:
        import onnxscript.optimizer

        onnxscript.optimizer.optimize_ir(model)
    proto = ir.serde.serialize_model(model)
    _name_dims(proto)
    log.info("translated to ONNX in %.1fs, optimized in %.1fs: %d nodes", t1 - t0, time.perf_counter() - t1,
             len(proto.graph.node))
    return proto


def _name_dims(proto) -> None:
    """Input x[N,3,H,W], outputs objective[N] and grad[N,3,H,W]; drop intermediate symbolic shapes."""
    names = {INPUT_NAME: ("N", 3, "H", "W"), "objective": ("N",), "grad": ("N", 3, "H", "W")}
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        want = names[vi.name]
        del dims[:]
        for d in want:
            new = dims.add()
            if isinstance(d, int):
                new.dim_value = d
            else:
                new.dim_param = d
    del proto.graph.value_info[:]
    for n in proto.graph.node:  # the translator's per-node provenance bloats the file
        del n.metadata_props[:]


__all__ = ["GradientOfObjective", "INPUT_NAME", "OUTPUT_NAMES", "to_onnx", "trace_gradient"]
