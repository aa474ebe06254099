"""The ``dreamfleet run`` subcommand: a dream job on a Ray cluster (a local one by default).

``dreamfleet run INPUT... -o OUT`` takes every ``dreamfleet dream`` option plus the
cluster options; ``dreamfleet run job.toml`` reads the job file, whose ``inputs`` and
``output`` keys (paths relative to the job file's folder) say what to dream and where.
Exit codes: 0 everything dreamed or skipped; 1 images failed or are unaccounted for.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dreamfleet.engine.vocabulary import REPORT_NAME

log = logging.getLogger(__name__)

JOB_KEYS = ("inputs", "output")  # job-file keys that are not dream parameters
CLUSTER_FILE_KEYS = ("cpus_per_worker",)  # job-file keys (dashes allowed) for the cluster flags of the same name


def add_parser(subparsers) -> None:
    from dreamfleet.options import add_dream_options

    p = subparsers.add_parser(
        "run", help="dream a folder on a Ray cluster (starts a local one by default)",
        description="Dream every input on a pool of Ray actors, one per GPU (or per CPU core pair). "
                    "Rerunning the same job finishes only what is missing. A single JOB.toml argument "
                    "is read as --config, with its `inputs` and `output` keys as the inputs and -o.")
    add_dream_options(p)
    for action in p._actions:  # -o may come from the job file
        if action.dest == "output":
            action.required = False
    g = p.add_argument_group("cluster")
    g.add_argument("--workers", type=int, default=None,
                   help="actors (default: one per GPU, or one per CPU core pair without GPUs)")
    g.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per actor; 0.5 lets two small-model actors share a GPU (default: 1 with GPUs, else 0)")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join: 'auto' or HOST:PORT (default: start a local Ray)")
    g.add_argument("--retries", type=int, default=2, help="failed attempts an image may have before quarantine "
                                                          "(default: 2)")
    g.add_argument("--shard-timeout", type=float, default=1800.0,
                   help="seconds a worker may stay silent on a shard before it is killed as hung (default: 1800)")
    g.add_argument("--shard-size", type=int, default=0, help="images per shard (default: 0 = automatic)")
    g.add_argument("--threads-per-worker", type=int, default=1, help="torch threads per CPU worker (default: 1)")
    g.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs each actor asks Ray for; its decode and write threads are sized from them (default: "
                        "a GPU node's CPUs per GPU less 1 in 32 for Ray; 0.25 for CPU workers; job-file key "
                        "cpus-per-worker)")
    g.add_argument("--start-timeout", type=float, default=300.0,
                   help="seconds to wait for GPU nodes (asked of the autoscaler on a joined cluster) and for the "
                        "first worker to start (default: 300)")
    g.add_argument("--contact-sheet", type=int, default=36, metavar="N",
                   help="input/dream pairs on the contact sheet (default: 36; 0: none)")
    g.add_argument("--dashboard", action="store_true", default=False,
                   help="start the Ray dashboard with a local Ray (default: off)")
    p.set_defaults(func=cmd_run)


def resolve_job(args: argparse.Namespace):
    """(DreamConfig, inputs, output) from the flags and an optional job file; flags win."""
    from dreamfleet.engine.config import field_names, load_toml, make_config, read_toml
    from dreamfleet.engine.storage import is_url, location

    inputs, config = list(args.inputs), args.config
    if len(inputs) == 1 and inputs[0].endswith(".toml"):
        if not Path(inputs[0]).is_file():
            raise ValueError(f"job file {inputs[0]} not found; give an existing JOB.toml or INPUT... -o OUT")
        if config:
            raise ValueError("give the job file either as the only INPUT or as --config, not both")
        config, inputs = inputs[0], []
    file_values: dict = {}
    job: dict = {}
    if config:
        raw = read_toml(config)
        base = Path(config).parent
        if "inputs" in raw:
            listed = raw["inputs"] if isinstance(raw["inputs"], list) else [raw["inputs"]]
            job["inputs"] = [p if is_url(p) else str(base / location(p)) for p in listed]
        if "output" in raw:
            job["output"] = raw["output"] if is_url(raw["output"]) else str(base / location(raw["output"]))
        file_values = {k: v for k, v in load_toml(config).items() if k not in JOB_KEYS + CLUSTER_FILE_KEYS}
        for key, value in load_toml(config).items():
            if key in CLUSTER_FILE_KEYS and getattr(args, key, None) is None:  # the flag wins over the file
                setattr(args, key, value)
    inputs = inputs or job.get("inputs", [])
    output = args.output or job.get("output")
    if not inputs:
        raise ValueError("no inputs: give INPUT paths or an `inputs = [...]` key in the job file")
    if not output:
        raise ValueError("no output folder: give -o OUT or an `output = \"...\"` key in the job file")
    overrides = {k: getattr(args, k, None) for k in field_names() if k != "preset"}
    return make_config(args.preset, file_values, overrides), inputs, output


def require_ray() -> None:
    """Say up front, before any planning or writing, that cluster mode needs the ``cluster`` extra."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"`dreamfleet run` needs Ray, which is not installed here ({exc}); install it with "
                          "pip install 'dreamfleet[cluster]', or dream in this process with `dreamfleet dream`") from None


def cmd_run(args: argparse.Namespace) -> int:
    from dreamfleet.backends import create_backend, preflight
    from dreamfleet.engine.preflight import check_inputs_exist
    from dreamfleet.engine.report import records_target

    from .driver import ClusterOptions, run_cluster_job

    require_ray()
    cfg, inputs, output = resolve_job(args)
    check_inputs_exist(inputs)  # none of the inputs exists: a usage error, not a job of failures
    check_cluster_flags(args)  # a job file's cpus-per-worker may be any TOML value
    opts = ClusterOptions(workers=args.workers, gpus_per_worker=args.gpus_per_worker, address=args.address,
                          retries=args.retries, shard_timeout=args.shard_timeout, shard_size=args.shard_size,
                          torch_threads=args.threads_per_worker, contact_sheet=args.contact_sheet,
                          dashboard=args.dashboard, cpus_per_worker=args.cpus_per_worker,
                          start_timeout=args.start_timeout).validate()  # NaN/inf/out of range: exit 2 before Ray
    preflight(cfg)  # bad --weights/--guide/--onnx/--channels: exit 2 before anything is written
    result = run_cluster_job(cfg, inputs, output, create_backend, opts, progress=args.progress)
    report = result.report
    print(summary_line(result))
    print(f"report: {report.out_dir / REPORT_NAME} (records: {records_target(report.out_dir)})")
    for line in report.failure_lines():  # the first failures, then the stop line of a persistent write error
        print(line, file=sys.stderr)
    for miss in result.reconciliation["unaccounted"]:
        print(f"  unaccounted: {miss['input']}: {miss['why']}", file=sys.stderr)
    return result.exit_code


def check_cluster_flags(args: argparse.Namespace) -> None:
    """A job file's cpus-per-worker must be a number (ranges, --start-timeout's included, are ClusterOptions' limits)."""
    cpw = args.cpus_per_worker
    if cpw is not None and (isinstance(cpw, bool) or not isinstance(cpw, (int, float)) or cpw <= 0):
        raise ValueError(f"--cpus-per-worker (job-file key cpus-per-worker) must be a number > 0, got {cpw!r}")


def summary_line(result) -> str:
    extra = result.report.extra
    workers = extra.get("workers", {})
    return (f"{result.report.summary()}; {len(workers)} worker(s), {extra.get('retries', 0)} retries, "
            f"{extra.get('worker_restarts', 0)} worker restarts, {len(extra.get('quarantined', []))} quarantined, "
            f"{len(result.reconciliation['unaccounted'])} unaccounted")


__all__ = ["CLUSTER_FILE_KEYS", "JOB_KEYS", "add_parser", "check_cluster_flags", "cmd_run", "require_ray", "resolve_job", "summary_line"]
