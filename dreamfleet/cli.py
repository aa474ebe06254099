"""The ``dreamfleet`` command line: dream, run, export, bench, models, layers.

Exit codes: 0 everything dreamed or skipped; 1 some images failed; 2 a usage or
configuration error (message on stderr, no traceback).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from dreamfleet.engine.config import config_to_dict
from dreamfleet.engine.hostmem import enable_huge_pages, share_main_arena
from dreamfleet.engine.version import dreamfleet_version
from dreamfleet.engine.vocabulary import REPORT_NAME

log = logging.getLogger("dreamfleet")

# subcommands contributed by the other packages: module with add_parser(subparsers)
_PLUGINS = ("dreamfleet.export.commands", "dreamfleet.cluster.commands", "dreamfleet.benchmarks.commands")


def cmd_dream(args: argparse.Namespace) -> int:
    from dreamfleet.backends import create_backend, preflight
    from dreamfleet.engine.job import run_job
    from dreamfleet.engine.preflight import check_inputs_exist
    from dreamfleet.engine.report import records_target
    from dreamfleet.options import config_from_args

    cfg = config_from_args(args)
    check_inputs_exist(args.inputs)  # none of the inputs exists: a usage error, not a job of failures
    preflight(cfg)  # bad --weights/--guide/--onnx/--channels: exit 2 before anything is written
    log.debug("config: %s", config_to_dict(cfg))
    report = run_job(cfg, args.inputs, args.output, create_backend, progress=args.progress)
    print(report.summary())
    print(f"report: {report.out_dir / REPORT_NAME} (records: {records_target(report.out_dir)})")
    for line in report.failure_lines():  # the first failures, then the stop line of a persistent write error
        print(line, file=sys.stderr)
    return 1 if report.counts()["failed"] else 0


def cmd_models(args: argparse.Namespace) -> int:
    from dreamfleet.engine.models import REGISTRY

    print(f"{'model':16} {'default layer':14} {'min px':>6}  weights")
    for spec in REGISTRY.values():
        src = f"vendored ({spec.vendored})" if spec.vendored else f"torchvision {spec.tv_weights}"
        print(f"{spec.name:16} {spec.default_layer:14} {spec.min_size:>6}  {src}")
        print(f"{'':16} {spec.description}; dream layers: {', '.join(spec.dream_layers)}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from dreamfleet.engine.build import build_full_model
    from dreamfleet.engine.models import get_spec
    from dreamfleet.engine.truncate import layer_shapes

    spec = get_spec(args.model)
    model, _ = build_full_model(spec, random_weights=True)  # shapes do not depend on weights
    print(f"{args.model}: layers and output shapes for a 1x3x{args.size}x{args.size} input (* = recommended)")
    for name, shape in layer_shapes(spec, model, args.size):
        mark = "*" if name in spec.dream_layers else " "
        default = "  (default)" if name == spec.default_layer else ""
        print(f" {mark} {name:24} {'x'.join(map(str, shape))}{default}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from dreamfleet.options import add_dream_options

    parser = argparse.ArgumentParser(prog="dreamfleet", description="DeepDream as a high-throughput batch service.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {dreamfleet_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("dream", help="dream images in this process",
                       description="Dream every input image into the output folder.")
    add_dream_options(p)
    p.set_defaults(func=cmd_dream)
    p = sub.add_parser("models", help="list the model registry")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("layers", help="list a model's layers with output shapes")
    p.add_argument("model", help="registry name (see `dreamfleet models`)")
    p.add_argument("--size", type=int, default=224, help="input side for the shapes (default: 224)")
    p.set_defaults(func=cmd_layers)
    for name in _PLUGINS:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    enable_huge_pages()  # before anything imports torch: PyTorch reads it once (engine/hostmem.py)
    share_main_arena()  # before any thread exists: CPU lanes' activations stay in the kept main heap (issue 17)
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, RuntimeError, OSError, ImportError) as exc:
        # user mistakes and unavailable resources: a message, not a traceback
        if args.verbose >= 2:
            raise
        print(f"dreamfleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dreamfleet: interrupted; finished outputs are kept, rerun to complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_parser", "cmd_dream", "cmd_layers", "cmd_models", "main"]
