"""Node facts for sizing the pool: CPUs per GPU actor, how many actors the nodes hold, asking the autoscaler.

CPU budget of a GPU actor (``gpu_worker_cpus``): a node's CPUs per GPU, after a reserve of
one CPU in every ``RESERVE_ONE_CPU_PER`` (none below that) for Ray's daemons and the driver,
rounded down to whole CPUs (fractional GPUs get that share; below one CPU, multiples of a
quarter, at least ``MIN_CPUS``). With several GPU node shapes the smallest share wins, so an
actor fits on any of them. The actor sizes its decode and write thread pools from the CPUs Ray
gives it (``engine.pipeline.resolve_io_threads``). A CPU actor keeps a small ``CPU_WORKER_CPUS``
share: its work is torch threads (``--threads-per-worker``), and the default pool has one actor
per two cores. ``--cpus-per-worker`` overrides both.

Autoscaling: a job that asks for GPUs on a cluster it joined asks the autoscaler for every
worker's bundle (``request_resources``) and waits up to ``--start-timeout`` for the first GPU
node, logging what it waits for; the pool then starts actors as more nodes join
(``worker_capacity``). A local Ray started by the job cannot grow, so there an impossible ask
is refused at once. A job that asked for GPUs never falls back to CPU workers.
"""
from __future__ import annotations

import logging
import math
import time

log = logging.getLogger(__name__)

RESERVE_ONE_CPU_PER = 32  # a node keeps 1 CPU in 32 for the raylet, object store, dashboard agent and driver
MIN_CPUS = 0.25  # the smallest CPU share an actor asks for
CPU_WORKER_CPUS = 0.25  # a CPU actor's share: its torch threads are set by --threads-per-worker
WAIT_LOG_SECONDS = 10.0  # while waiting for nodes, how often to say so


def alive_node_resources(ray) -> list[dict]:
    """The total resources of every alive node (``{"CPU": 16.0, "GPU": 2.0, ...}``); [] if Ray cannot answer."""
    try:
        return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    except Exception as exc:  # the GCS is gone
        log.debug("ray.nodes() failed: %s", exc)
        return []


def reserved_cpus(node_cpus: float) -> int:
    return int(node_cpus // RESERVE_ONE_CPU_PER)


def gpu_worker_cpus(nodes: list[dict], gpus_per_worker: float) -> float | None:
    """CPUs for an actor of ``gpus_per_worker`` GPUs: the smallest GPU node's share; None with no GPU node."""
    shares = [(n.get("CPU", 0.0) - reserved_cpus(n.get("CPU", 0.0))) * gpus_per_worker / n["GPU"]
              for n in nodes if n.get("GPU", 0) >= gpus_per_worker > 0]
    if not shares:
        return None
    share = min(shares)
    return float(math.floor(share)) if share >= 1 else max(MIN_CPUS, math.floor(share * 4) / 4)


def worker_capacity(nodes: list[dict], gpus_per_worker: float, cpus_per_worker: float) -> int:
    """How many actors of this shape the alive nodes hold in total."""
    if gpus_per_worker <= 0:
        return sum(int(n.get("CPU", 0) // cpus_per_worker) for n in nodes)
    return sum(min(int(n.get("GPU", 0) // gpus_per_worker), int(n.get("CPU", 0) // cpus_per_worker))
               for n in nodes)


def request_bundles(ray, bundles: list[dict]) -> None:
    """Ask the autoscaler to fit ``bundles`` ([] withdraws the ask); a cluster without one ignores it."""
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)
    except Exception as exc:  # no autoscaler state to write to: nothing to ask
        log.debug("request_resources(%s): %s", bundles, exc)


def wait_for_gpu_nodes(ray, workers: int, gpus_per_worker: float, cpus_per_worker: float | None,
                       timeout: float, sleep: float = 1.0) -> list[dict]:
    """Ask the autoscaler for ``workers`` GPU bundles and wait until a node holds one; returns the alive nodes.

    Raises RuntimeError after ``timeout`` seconds with what was asked and what the cluster has.
    """
    bundle = {"GPU": gpus_per_worker, **({"CPU": cpus_per_worker} if cpus_per_worker else {})}
    request_bundles(ray, [dict(bundle) for _ in range(workers)])
    t0 = last_log = time.monotonic()
    while True:
        nodes = alive_node_resources(ray)
        if any(n.get("GPU", 0) >= gpus_per_worker and n.get("CPU", 0) >= (cpus_per_worker or 0) for n in nodes):
            return nodes
        waited = time.monotonic() - t0
        have = {"GPU": sum(n.get("GPU", 0) for n in nodes), "CPU": sum(n.get("CPU", 0) for n in nodes)}
        if waited >= timeout:
            raise RuntimeError(f"no node with {bundle} joined within --start-timeout {timeout:g}s (asked the "
                               f"autoscaler for {workers} x {bundle}); the cluster has {have} on {len(nodes)} nodes")
        if waited == 0 or time.monotonic() - last_log >= WAIT_LOG_SECONDS:
            last_log = time.monotonic()
            log.info("waiting for GPU nodes: %d worker(s) x %s asked of the autoscaler; cluster has %s on %d "
                     "node(s) (%.0fs of %gs)", workers, bundle, have, len(nodes), waited, timeout)
        time.sleep(sleep)


__all__ = ["CPU_WORKER_CPUS", "MIN_CPUS", "RESERVE_ONE_CPU_PER", "alive_node_resources", "gpu_worker_cpus",
           "request_bundles", "reserved_cpus", "wait_for_gpu_nodes", "worker_capacity"]
