"""Gradient-graph export: parity with PyTorch autograd for every registry model, dims, metadata, op check."""
from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F
from export_fixtures import CASES, exported

from dreamfleet.engine.build import build_dream_model
from dreamfleet.export import decomp
from dreamfleet.export.onnx_export import (
    PARITY_COSINE,
    PARITY_REL_L2,
    check_metadata,
    expected_metadata,
    parity,
    read_metadata,
)
from dreamfleet.export.opcheck import trt_problems

ALL_CASES = list(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case", ALL_CASES, ids=[f"{c[0]}-{c[2]}" for c in ALL_CASES])
def test_parity_with_autograd(case, request, tmp_path_factory):
    dm, path = exported(request.config, tmp_path_factory, *case)
    fig = parity(path, dm, CASES[case])
    print(f"{case[0]} {case[1] or dm.spec.default_layer} {case[2]}: rel L2 {fig['rel_l2']:.3g} cosine {fig['cosine']:.8f}")
    assert fig["rel_l2"] <= PARITY_REL_L2 and fig["cosine"] >= PARITY_COSINE, fig
    assert fig["objective_rel"] <= 1e-4, fig
    # every node inside TensorRT 10's ONNX support (MaxPool without Indices, no Scatter reductions, ...)
    assert trt_problems(path) == []


def test_dims_named_and_metadata(request, tmp_path_factory):
    dm, path = exported(request.config, tmp_path_factory, "bvlc_googlenet")
    proto = onnx.load(str(path), load_external_data=False)

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    assert [(i.name, dims(i)) for i in proto.graph.input] == [("x", ["N", 3, "H", "W"])]
    assert [(o.name, dims(o)) for o in proto.graph.output] == [("objective", ["N"]), ("grad", ["N", 3, "H", "W"])]
    meta = read_metadata(path)
    assert meta["model"] == "bvlc_googlenet" and meta["layers"] == "inception4c:1" and meta["opset"] == "18"
    assert meta["objective"] == "l2" and meta["mean"] == "0.485,0.456,0.406" and len(meta["weights_sha256"]) == 64
    check_metadata(meta, expected_metadata(dm))  # matches its own job
    other = build_dream_model("bvlc_googlenet", "inception4d")
    with pytest.raises(ValueError, match="layers"):
        check_metadata(meta, expected_metadata(other), path)
    with pytest.raises(ValueError, match="not a dreamfleet gradient graph"):
        check_metadata({}, expected_metadata(dm), path)


def test_export_command(tmp_path, capsys, monkeypatch):
    import argparse

    from dreamfleet.export import commands, onnx_export

    parser = argparse.ArgumentParser(prog="dreamfleet")
    commands.add_parser(parser.add_subparsers())
    out = tmp_path / "g.onnx"
    argv = ["export", "--model", "vgg16", "--layer", "features.3", "--random-weights", "-o", str(out),
            "--objective", "channel", "--channels", "1,2", "--check-size", "40x44"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "parity [2, 3, 40, 44]: rel L2" in text and "TensorRT 10 operator check: ok" in text
    assert read_metadata(out)["channels"] == "1,2"
    monkeypatch.setattr(onnx_export, "PARITY_REL_L2", -1.0)  # nothing passes: the command must fail
    out.unlink()
    args = parser.parse_args(argv)
    assert args.func(args) == 1
    assert "FAILED parity" in capsys.readouterr().out and not out.exists()


def test_guided_objective_refused():
    dm = build_dream_model("bvlc_googlenet", "inception3a", "guide", guide=torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="valid for export: l2, norm, channel"):
        expected_metadata(dm)


def _tied_input(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, shape, generator=g).double()  # few values: ties in almost every window


@pytest.mark.parametrize("k,s,p,ceil,hw", [(3, 2, 0, True, (13, 16)), (3, 1, 1, True, (9, 10)), (2, 2, 0, False, (11, 9)),
                                           (3, 2, 1, False, (12, 15)), (3, 2, 0, False, (15, 16))])
def test_max_pool_backward_first_max_matches_torch_with_ties(k, s, p, ceil, hw):
    x = _tied_input((2, 3, *hw)).requires_grad_(True)
    y = F.max_pool2d(x, k, s, p, ceil_mode=ceil)
    gy = torch.randn_like(y)
    (ref,) = torch.autograd.grad(y, x, gy)
    ours = decomp.max_pool2d_backward_first_max(gy, x.detach(), [k, k], [s, s], [p, p], [1, 1], ceil, None)
    torch.testing.assert_close(ours, ref)
    # the rule that sends the gradient to every tied position gives a different (wrong) answer here
    assert not torch.allclose(_all_ties_rule(gy, x.detach(), k, s, p, y.shape[-2:]), ref)


def _all_ties_rule(gy, x, k, s, p, out_hw):
    """grad[N,C,Ho,Wo] -> [N,C,H,W] sending each window's gradient to every position equal to its max."""
    n, c, h, w = x.shape
    xp = F.pad(x, (p, p + k, p, p + k), value=float("-inf"))  # enough for ceil-mode windows
    cols = F.unfold(xp, k, stride=s)  # [N, C*k*k, L]
    ho, wo = out_hw
    hp, wp = xp.shape[-2:]
    lh, lw = (hp - k) // s + 1, (wp - k) // s + 1
    cols = cols.view(n, c, k * k, lh, lw)[..., :ho, :wo]  # [N,C,k*k,Ho,Wo]
    mask = (cols == cols.amax(dim=2, keepdim=True)).double()
    contrib = F.pad(mask * gy.unsqueeze(2), (0, lw - wo, 0, lh - ho)).view(n, c * k * k, lh * lw)
    full = F.fold(contrib, (hp, wp), k, stride=s)  # [N,C,Hp,Wp]
    return full[..., p:p + h, p:p + w]


@pytest.mark.parametrize("stride,padding,groups,hw", [(1, 1, 1, (9, 10)), (2, 3, 1, (16, 17)), (2, 0, 2, (15, 14)),
                                                      (3, 1, 4, (13, 11))])
def test_convolution_backward_is_conv_transpose_plus_crop(stride, padding, groups, hw):
    x = torch.randn(2, 4, *hw, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 4 // groups, 3, 3, dtype=torch.float64)
    y = F.conv2d(x, w, None, stride, padding, 1, groups)
    gy = torch.randn_like(y)
    (ref,) = torch.autograd.grad(y, x, gy)
    ours, _, _ = decomp.convolution_backward(gy, x.detach(), w, None, [stride] * 2, [padding] * 2, [1, 1], False,
                                             [0, 0], groups, [True, False, False])
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_backward_is_depthwise_conv_transpose(count_include_pad):
    x = torch.randn(2, 5, 11, 12, dtype=torch.float64, requires_grad=True)
    y = F.avg_pool2d(x, 3, 2, 1, count_include_pad=count_include_pad)
    gy = torch.randn_like(y)
    (ref,) = torch.autograd.grad(y, x, gy)
    ours = decomp.avg_pool2d_backward(gy, x.detach(), [3, 3], [2, 2], [1, 1], False, count_include_pad, None)
    torch.testing.assert_close(ours, ref)


def test_opcheck_flags_trt_restrictions():
    h = onnx.helper
    t = onnx.TensorProto.FLOAT
    nodes = [
        h.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2]),
        h.make_node("ScatterElements", ["x", "i", "u"], ["z"], reduction="add"),
        h.make_node("ScatterElements", ["x", "i", "u"], ["z2"]),
        h.make_node("MaxUnpool", ["y", "idx"], ["w"], kernel_shape=[2, 2]),
        h.make_node("FancyOp", ["x"], ["f"]),
    ]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", t, None)], [h.make_tensor_value_info("w", t, None)])
    problems = trt_problems(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]))
    text = "\n".join(problems)
    assert len(problems) == 4, text
    assert "MaxPool" in text and "Indices" in text and "reduction='add'" in text and "MaxUnpool" in text
    assert "FancyOp" in text
