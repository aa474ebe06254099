"""Storage benchmark: images/s of the same in-process job reading/writing local disk vs an S3 server.

The S3 side is a moto server on loopback (``python -m moto.server``), so the figure is the
cost of dreamfleet's object-store path (listing, header probes, streamed reads, one PUT
per output, the lease, report and job file), not of a real network. Local and S3 runs
alternate (``--rounds`` of each, fresh outputs every time) so they see the same machine
load; the medians and their ratio (S3 / local) are printed and one JSON row with config,
versions and device is appended to ``benchmarks/results/storage_cpu.jsonl``.

    python benchmarks/storage_bench.py --images 24 --max-side 128 --iterations 2 --rounds 3
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .cluster_bench import add_job_arguments, figures, make_job
from .rows import append_rows

RESULTS = Path(__file__).resolve().parent / "results" / "storage_cpu.jsonl"


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_job_arguments(ap, images=24, iterations=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import boto3

    from dreamfleet.backends import create_backend
    from dreamfleet.engine.config import config_to_dict, make_config
    from dreamfleet.engine.job import run_job
    from dreamfleet.engine.report import environment

    proc, endpoint = start_moto()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint)
    cfg = make_config(None, None, dict(model=args.model, max_side=args.max_side, iterations=args.iterations,
                                       octaves=args.octaves, batch_size=args.batch_size, device="cpu"))
    root = Path(tempfile.mkdtemp(prefix="dreamfleet-storage-bench-"))
    row: dict = {"bench": "storage_cpu", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "images": args.images,
                 "rounds": args.rounds, "config": config_to_dict(cfg), "environment": environment(), "device": "cpu",
                 "s3_server": "moto (loopback)", "loadavg_before": os.getloadavg()}
    runs: dict[str, list[dict]] = {"local": [], "s3": []}
    try:
        make_job(root / "in", args.images, args.max_side)
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        for f in sorted((root / "in").iterdir()):
            client.put_object(Bucket="bench", Key=f"in/{f.name}", Body=f.read_bytes())
        for r in range(args.rounds):
            for kind in ("local", "s3") if r % 2 == 0 else ("s3", "local"):
                src, dst = (str(root / "in"), root / f"out-{r}") if kind == "local" else ("s3://bench/in",
                                                                                         f"s3://bench/out-{r}")
                rep = run_job(cfg, [src], dst, create_backend, progress=False)
                assert rep.counts()["done"] == args.images, rep.counts()
                done = [x for x in rep.records if x.status == "done"]
                runs[kind].append(dict(figures(rep), plan_s=round(rep.totals()["wall_seconds"] - rep.work_seconds, 3),
                                       **{f"{t}_s_per_image": round(sum(x.timings.get(t, 0) for x in done) / len(done),
                                                                   5) for t in ("load", "dream", "save")}))
                print(f"round {r} {kind:5}: {rep.summary()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        proc.terminate()
        proc.wait()
    row["loadavg_after"] = os.getloadavg()
    for kind, figs in runs.items():
        row[kind] = {"runs": figs, **{f"median_{k}": statistics.median(f[k] for f in figs)
                                      for k in ("images_per_s", "images_per_s_steady", "load_s_per_image", "save_s_per_image",
                  "dream_s_per_image", "plan_s")}}
    for k in ("images_per_s", "images_per_s_steady"):
        row[f"ratio_s3_vs_local_{k}"] = round(row["s3"][f"median_{k}"] / row["local"][f"median_{k}"], 3)
        print(f"{k}: local {row['local'][f'median_{k}']:.3f}, s3 {row['s3'][f'median_{k}']:.3f} -> "
              f"ratio s3/local {row[f'ratio_s3_vs_local_{k}']}")
    io_extra = sum(row["s3"][f"median_{t}_s_per_image"] - row["local"][f"median_{t}_s_per_image"]
                   for t in ("load", "save"))
    row["s3_extra_io_s_per_image"] = round(io_extra, 5)
    row["s3_extra_io_share_of_local_image_time"] = round(io_extra * row["local"]["median_images_per_s_steady"], 4)
    print(f"S3 adds {io_extra * 1e3:.1f} ms of load+save per image = "
          f"{100 * row['s3_extra_io_share_of_local_image_time']:.1f}% of a local image's time; planning "
          f"{row['local']['median_plan_s']:.2f}s local vs {row['s3']['median_plan_s']:.2f}s S3")
    append_rows(args.results, [row])
    print(f"row appended to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
