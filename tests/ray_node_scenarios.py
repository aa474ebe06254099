"""Run as a script (by test_cluster_nodes.py): node-shape and autoscaling scenarios on their own local Ray.

A head node declaring 16 CPUs and 2 (fake) GPUs. Scenario ``sized``: the CLI's
``run --gpus-per-worker 1 --device cpu`` against it. Scenario ``grow``: a 3-worker GPU job
starts with room for 2; a node with 8 CPUs and 1 GPU joins once the job is dreaming, and the
pool must start the third worker on it. Writes {"sized": report, "grow": {...}} as JSON to argv[2].
It runs in its own process because the test session already holds another Ray cluster.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).parent))

from ray_fixtures import OBJECT_STORE, make_images, tiny_config  # noqa: E402

TINY = ["--model", "googlenet", "--random-weights", "--max-side", "64", "--iterations", "1", "--octaves", "2",
        "--batch-size", "2", "--no-progress"]


def sized(cluster, tmp: Path) -> dict:
    from dreamfleet.cli import main

    make_images(tmp / "sized_in", 4)
    code = main(["run", str(tmp / "sized_in"), "-o", str(tmp / "sized_out"), "--address", cluster.address,
                 "--gpus-per-worker", "1", "--device", "cpu", "--shard-size", "1", "--contact-sheet", "0", *TINY])
    report = json.loads((tmp / "sized_out" / "dreamfleet-report.json").read_text())
    return {"exit_code": code, "workers": report["workers"], "cluster": report["cluster"]}


def grow(cluster, tmp: Path) -> dict:
    from dreamfleet.cluster import testing
    from dreamfleet.cluster.driver import ClusterOptions, run_cluster_job

    make_images(tmp / "grow_in", 12)
    out, marker = tmp / "grow_out", tmp / "joined.json"
    factory = functools.partial(testing.slow_until_joined_backend, marker=str(marker), late_resource="late_node",
                                seconds=2.0)
    opts = ClusterOptions(workers=3, gpus_per_worker=1, shard_size=1, contact_sheet=0, start_timeout=120)
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(res=run_cluster_job(tiny_config(device="cpu"),
                                                                            [str(tmp / "grow_in")], out, factory,
                                                                            opts, progress=False)))
    job.start()
    deadline = time.monotonic() + 120
    while not list(out.glob("img*.png")) and time.monotonic() < deadline:  # the job is dreaming on 2 workers
        time.sleep(0.2)
    joined_after = len(list(out.glob("img*.png")))
    cluster.add_node(num_cpus=8, num_gpus=1, object_store_memory=OBJECT_STORE, resources={"late_node": 1})
    job.join(timeout=240)
    report = result["res"].report
    return {"joined_after_outputs": joined_after, "counts": report.counts(), "workers": report.extra["workers"],
            "late_worker_stepped": marker.exists(), "exit_code": result["res"].exit_code,
            "late_node_id": [n["NodeID"] for n in __import__("ray").nodes() if "late_node" in n["Resources"]][0]}


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    tmp = Path(sys.argv[1])
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 16, "num_gpus": 2, "object_store_memory": OBJECT_STORE, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        found = {"sized": sized(cluster, tmp), "grow": grow(cluster, tmp)}
    finally:
        ray.shutdown()
        cluster.shutdown()
    Path(sys.argv[2]).write_text(json.dumps(found, default=str))


if __name__ == "__main__":
    main()
