"""Session-scoped Ray fixtures for the cluster tests: a real two-node local cluster.

Two Ray nodes on this machine (``ray.cluster_utils.Cluster``), one CPU each, *fake* GPUs
(2 on the head, 1 on the second node; Ray still pins ``CUDA_VISIBLE_DEVICES`` per actor)
and small object stores. Import into a test module: ``from ray_fixtures import ray_cluster``.
Also holds the tiny job config and image generator the cluster tests share.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

OBJECT_STORE = 80 * 1024 * 1024


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # someone else's session cluster: reuse it
        yield ray.get_runtime_context().gcs_address
        return
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 2, "object_store_memory": OBJECT_STORE, "include_dashboard": False})
    cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=OBJECT_STORE, resources={"second_node": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=True)
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def tiny_config(**kw):
    from dreamfleet.engine.config import make_config

    values = dict(model="googlenet", random_weights=True, max_side=64, iterations=1, octaves=2, batch_size=2)
    values.update(kw)
    return make_config(None, None, values)


def make_images(folder, n, poison=(), seed=0):
    """n small random PNGs (two shapes) in ``folder``; indices in ``poison`` are flat grey."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h = 48 if i % 3 == 0 else 64
        arr = np.full((h, 64, 3), 128, np.uint8) if i in poison else rng.integers(0, 255, (h, 64, 3), dtype=np.uint8)
        p = folder / f"img{i:02d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths
