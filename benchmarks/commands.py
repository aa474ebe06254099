"""The ``dreamfleet bench`` subcommand (auto-registered by ``dreamfleet.cli``) and its handler.

``dreamfleet bench`` runs the CPU-sized ``quick`` profile; ``--full`` runs the standard
job. Rows go to ``benchmarks/results/<device>[_full].jsonl``; the table is printed and
written to ``results/latest.md``, the chart to ``results/chart.png``.
"""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def _backends(text: str) -> tuple[str, ...]:
    from .profiles import ALL_BACKENDS

    names = tuple(b.strip() for b in text.split(",") if b.strip())
    bad = [b for b in names if b not in ALL_BACKENDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {bad or text!r}; valid: {', '.join(ALL_BACKENDS)}")
    return names


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .profiles import PROFILES

    p.add_argument("--full", action="store_true", help="the standard job: 3 octaves x 1.4 from 512 px, 10 iterations "
                   "(same as --profile full; hours on a 2-core CPU, minutes on a GPU)")
    p.add_argument("--profile", choices=PROFILES, default=None, help="case matrix (default: quick)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--out", default=None, metavar="DIR", help="results folder (default: benchmarks/results under the current directory)")
    p.add_argument("--backends", type=_backends, default=None, metavar="A,B",
                   help="backends to measure, of eager,compile,onnxruntime,tensorrt "
                        "(default: quick on CPU skips compile; full runs all that are installed)")
    p.add_argument("--only", default=None, metavar="TEXT", help="only cases whose key contains TEXT, e.g. 'googlenet'")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per case; the median is reported")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up runs per case")
    p.add_argument("--no-chart", dest="chart", action="store_false", help="skip chart.png")
    p.add_argument("--simulate", default=None, metavar="DEVICE", choices=("h100", "h200", "a100", "l4"),
                   help="run the standard job's real host path against a roofline-simulated GPU (h100, h200, a100, "
                        "l4; datasheet peaks); rows labelled simulated -> results/simulated_<device>.jsonl")
    p.add_argument("--sim-models", default="bvlc_googlenet,vgg16", metavar="A,B", help="--simulate: models")
    p.add_argument("--sim-settings", default="eager,graphs,fused", metavar="A,B",
                   help="--simulate: eager, graphs (CUDA graphs), fused (graphs + fusion, modelled)")
    p.add_argument("--sim-batch", type=int, default=32, help="--simulate: batch size (default: 32)")
    p.add_argument("--sim-images", type=int, default=384,
                   help="--simulate: images in the job (default: 384, 12 batches of 32: filling and draining the pipeline are amortized)")
    p.add_argument("--sim-precision", default="bf16", choices=("bf16", "fp32"), help="--simulate: precision (bf16)")
    g = p.add_argument_group("video (issue 20)")
    g.add_argument("--video", action="store_true", help="video: frames/s of clips in lockstep vs one at a time vs "
                   "the image path, and flicker vs independent frames -> results/video_<device>.jsonl")
    g.add_argument("--clips", type=int, default=3, help="--video: clips of one size in the lockstep job (default: 3)")
    g.add_argument("--frames", type=int, default=48, help="--video: frames per clip (default: 48)")
    g.add_argument("--strip", default=None, metavar="PNG", help="--video: also write a frame strip (sources, "
                   "coherent, independent) to PNG")
    p.add_argument("--report-only", action="store_true", help="only rebuild latest.md and chart.png from the results")
    g = p.add_argument_group("scale (the job's own costs as it grows: memory, report, skip-only rerun)")
    g.add_argument("--scale", action="store_true", help="run the job-size benchmark instead of the matrix")
    g.add_argument("--scale-sizes", default="2000,20000", metavar="A,B",
                   help="--scale: the two job sizes in images (default: 2000,20000)")
    g.add_argument("--scale-modes", default="dream,run", metavar="A,B",
                   help="--scale: in-process `dream` and/or cluster `run` (default: dream,run)")
    g = p.add_argument_group("pipeline (host pipeline vs a SIMULATED device)")
    g.add_argument("--pipeline", action="store_true", help="run the host-pipeline benchmark instead of the matrix")
    g.add_argument("--images", type=int, default=None,
                   help="--pipeline: generated JPEGs (default: 48 of 1600x1200; --tiled: 6 of 2400x1600)")
    g.add_argument("--device-ms", type=float, default=None,
                   help="--pipeline: simulated device time per image per step, ms (default: as slow as the host)")
    g.add_argument("--sim-device", default=None, metavar="NAME",
                   help="--pipeline: derive the device time from the job's FLOPs at 40%% of NAME's peak "
                        "(h100-bf16, a100-bf16, l4-bf16)")
    g.add_argument("--io-threads", type=int, default=0, help="--pipeline: decode/write threads (default: 0 = cores)")
    g.add_argument("--tiled", action="store_true", help="--pipeline: the tile scheduler's version (2400x1600 JPEGs "
                   "dreamed at full size, --tile 512; --images default 6)")
    g = p.add_argument_group("peer (dreamfleet against pytorch-deepdream on the same job, issue 17)")
    g.add_argument("--peer", action="store_true", help="alternate our harness of pytorch-deepdream's loop with "
                   "`dreamfleet dream` at batch 1 and 8 (VGG16 relu4_3, 256x192, 4 octaves x 10 iterations; "
                   "--repeats rounds, default 3; --images photos, default 8) -> results/peer.jsonl")
    g.add_argument("--precisions", type=_names, default=(), metavar="A,B",
                   help="--peer: also batch 8 at these precisions (e.g. auto,bf16)")
    g.add_argument("--threads", type=int, default=2, help="--peer: torch threads in every case (default: 2)")
    g.add_argument("--allocator-ab", action="store_true", help="--peer: also batch 1 and 8 with glibc's default "
                   "allocator settings (DREAMFLEET_CACHE_HOST_ALLOCATIONS=0), the state before issue 17's fix")
    g.add_argument("--lanes-ab", action="store_true", help="--peer: also batch 1 and 8 with --cpu-lanes 1 (no CPU "
                   "lanes; rows dreamfleet-b1-nolanes / -b8-nolanes), each right after its case with lanes")


def handle(args: argparse.Namespace) -> int:
    from . import report
    from .run import RESULTS_DIR, run_benchmarks

    if args.full and args.profile not in (None, "full"):
        raise ValueError(f"--full conflicts with --profile {args.profile}; valid: --full or --profile full")
    out = args.out or RESULTS_DIR
    for noisy in ("onnx_ir", "onnxscript", "torch._dynamo", "torch._inductor"):  # per-pass INFO lines drown the run
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.simulate:
        from pathlib import Path

        from .simulate import run_simulation, table

        rows = run_simulation(args.simulate, _names(args.sim_models), _names(args.sim_settings), args.sim_batch,
                              args.sim_images, args.sim_precision, Path(out))
        print(table(rows))
        return 0
    if args.scale:
        from pathlib import Path

        from .scale_bench import format_row, run_scale_bench

        sizes = tuple(int(v) for v in _names(args.scale_sizes))
        modes = _names(args.scale_modes)
        if len(sizes) != 2 or not 0 < sizes[0] < sizes[1]:
            raise ValueError(f"--scale-sizes {args.scale_sizes}: give two increasing sizes, e.g. 2000,20000")
        if not modes or set(modes) - {"dream", "run"}:
            raise ValueError(f"--scale-modes {args.scale_modes}: valid: dream, run")
        for row in run_scale_bench(sizes, modes, Path(out)):
            print(format_row(row))
        return 0
    if args.video:
        from pathlib import Path

        from dreamfleet.engine.backends.eager import resolve_device

        from .video_bench import format_row, run_video_bench

        device = str(resolve_device(args.device))
        row = run_video_bench(args.clips, args.frames, repeats=args.repeats or 3, device=device, results=Path(out),
                              strip=Path(args.strip) if args.strip else None)
        print(format_row(row))
        return 0
    if args.peer:
        from .peer_bench import run_peer_bench, table

        print(table(run_peer_bench(args.repeats or 3, args.images or 8, args.threads, args.precisions, out,
                                   args.allocator_ab, args.lanes_ab)))
        return 0
    if args.pipeline and args.tiled:
        from .tiled_pipeline import format_row, run_tiled_pipeline_bench

        row = run_tiled_pipeline_bench(args.images or 6, args.repeats or 2)
        print(format_row(row))
        return 0
    if args.pipeline:
        from .pipeline_bench import format_row, run_pipeline_bench

        row = run_pipeline_bench(args.images or 48, args.repeats or 3, args.device_ms, args.sim_device, args.io_threads)
        print(format_row(row))
        return 0
    if args.report_only:
        table = report.write_table(out)
        if args.chart:
            report.write_chart(out)
        print(table.read_text())
        return 0
    profile = "full" if args.full else (args.profile or "quick")
    rows = run_benchmarks(profile, args.device, out, args.backends, args.only, args.repeats, args.warmup, args.chart)
    print(report.write_table(out).read_text())
    failed = [r for r in rows if r["status"] == "failed"]
    for r in failed:
        log.error("%s failed: %s", r["case"], r["reason"])
    return 1 if failed else 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="benchmark images/s against the seed baseline and the FLOP limit",
                              description="Measure images/s, ms per step, memory and achieved TFLOP/s; write JSON "
                                          "rows, latest.md and chart.png to benchmarks/results/.")
    add_arguments(p)
    p.set_defaults(func=handle)
    return p
