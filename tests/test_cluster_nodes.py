"""Actors sized to the node, and a pool that grows onto a node joining mid-job (issue 19).

Both scenarios run once, in a subprocess with its own local Ray (tests/ray_node_scenarios.py):
the session's two-node cluster cannot be re-shaped from here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    pytest.importorskip("ray")
    tmp = tmp_path_factory.mktemp("nodes")
    result = tmp / "result.json"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("ray_node_scenarios.py")), str(tmp),
                           str(result)], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0 and result.exists(), proc.stderr[-3000:]
    return json.loads(result.read_text())


@pytest.mark.timeout(420)
def test_gpu_actors_take_the_nodes_cpus_per_gpu(scenarios):
    sized = scenarios["sized"]
    assert sized["exit_code"] == 0 and sized["cluster"]["cpus_per_worker"] == 8
    workers = sized["workers"]
    assert len(workers) == 2
    for w in workers.values():  # 16 CPUs / 2 GPUs, no reserve below 32 CPUs: 8 each, threads sized from them
        assert w["cpus"] == 8 and w["io_threads"] == 8 and w["torch_threads"] == 1 and len(w["gpu_ids"]) == 1
        assert w["decode_threads"] == w["write_threads"] == 8
    assert sum(w["done"] for w in workers.values()) == 4


@pytest.mark.timeout(420)
def test_pool_grows_onto_a_node_that_joins_mid_job(scenarios):
    grow = scenarios["grow"]
    assert grow["exit_code"] == 0 and grow["counts"] == {"done": 12, "skipped": 0, "failed": 0}
    assert grow["joined_after_outputs"] >= 1  # the node joined while the job was already dreaming
    late = [w for w in grow["workers"].values() if w.get("node_id") == grow["late_node_id"]]
    assert len(grow["workers"]) == 3 and len(late) == 1
    assert late[0]["done"] >= 1 and grow["late_worker_stepped"]
    assert late[0]["cpus"] == 8  # sized from the GPU nodes present when the job started
