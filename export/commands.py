"""The ``dreamfleet export`` subcommand: write a model's gradient graph to ONNX and check it.

``dreamfleet export --model bvlc_googlenet --layer inception4c -o g.onnx`` traces the
objective's input gradient, writes it with its metadata, runs the parity check against
PyTorch autograd (ONNX Runtime CPU), prints the figures and the TensorRT 10 operator
check, and exits non-zero when parity fails.
"""
from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def _channels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--channels takes comma-separated integers, e.g. 3,17; got {text!r}") from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``export`` on the CLI's subparsers; the handler is ``args.func(args) -> exit code``."""
    from dreamfleet.engine.models import list_models
    from dreamfleet.engine.objectives import GUIDED_KINDS, OBJECTIVE_KINDS

    from .onnx_export import EXPORT_PRECISIONS

    p = subparsers.add_parser("export", help="export the dream gradient graph to ONNX (checked against PyTorch)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bvlc_googlenet", choices=list_models())
    p.add_argument("--layer", default=None, help="NAME or NAME:W,NAME:W (default: the model's default layer)")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.add_argument("--objective", default="l2", choices=[k for k in OBJECTIVE_KINDS if k not in GUIDED_KINDS])
    p.add_argument("--channels", type=_channels, default=(), help="channel objective: e.g. 3,7")
    p.add_argument("--weights", default=None, help="local .safetensors/.pth state dict")
    p.add_argument("--random-weights", action="store_true", help="untrained weights (smoke tests)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--precision", default="fp32", choices=list(EXPORT_PRECISIONS),
                   help="compute precision baked into the graph (fp16/bf16 for strongly typed TensorRT engines)")
    p.add_argument("--check-size", default=None, help="HxW of the parity batch (default: 64x72 or the model's minimum)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check (not recommended)")
    p.set_defaults(func=handle)
    return p


def handle(args) -> int:
    from dreamfleet.engine.build import build_dream_model

    from .onnx_export import ParityError, export_gradient_onnx
    from .opcheck import trt_problems

    dm = build_dream_model(args.model, args.layer, args.objective, tuple(args.channels), args.weights,
                           args.random_weights)
    shapes = None
    if args.check_size:
        try:
            h, w = (int(v) for v in args.check_size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--check-size takes HxW, e.g. 64x72; got {args.check_size!r}") from None
        shapes = ((2, h, w),)
    try:
        report = export_gradient_onnx(dm, args.output, precision=args.precision, opset=args.opset,
                                      check=not args.no_check, check_shapes=shapes)
    except ParityError as exc:
        print(f"export FAILED parity check: {exc}")
        return 1
    for fig in report.get("parity", []):
        print(f"parity {fig['shape']}: rel L2 {fig['rel_l2']:.3g} (<= {fig['tolerance']['rel_l2']}), "
              f"cosine {fig['cosine']:.6f} (>= {fig['tolerance']['cosine']}), objective rel {fig['objective_rel']:.3g}")
    problems = trt_problems(args.output)
    print(f"TensorRT 10 operator check: {'ok' if not problems else str(len(problems)) + ' problem(s)'}")
    for line in problems:
        print(f"  {line}")
    print(f"wrote {report['path']}: {report['nodes']} nodes, ops {', '.join(report['op_types'])}")
    print("metadata: " + json.dumps({k: v for k, v in report["metadata"].items() if k != "weights_source"}))
    return 0


__all__ = ["add_parser", "handle"]
