"""The pool's shape for a job: workers, GPUs and CPUs per actor, waiting for autoscaled GPU nodes first.

``resolve_pool_options`` fills the defaults from the cluster's resources (one actor per GPU,
or one per two cores without GPUs; the CPU budget per actor from ``resources.gpu_worker_cpus``)
and refuses what the cluster can never hold. ``pool_options_for`` is what the driver calls: on
a cluster the job joined (which may autoscale) a GPU job asks the autoscaler for its bundles and
waits up to ``--start-timeout`` for the first GPU node instead of refusing, then sizes the CPU
budget from the GPU nodes that are there. A job that asked for GPUs never gets CPU workers.
"""
from __future__ import annotations

import dataclasses
import logging

from dreamfleet.engine.config import DreamConfig

from .resources import (
    CPU_WORKER_CPUS,
    MIN_CPUS,
    alive_node_resources,
    gpu_worker_cpus,
    request_bundles,
    wait_for_gpu_nodes,
)
from .slots import PoolOptions

log = logging.getLogger(__name__)


def resolve_pool_options(opts, resources: dict, nodes: list[dict] | None = None, can_grow: bool = False,
                         asked_gpus: bool = False) -> PoolOptions:
    """Fill the defaults from the cluster (``opts``: a ``driver.ClusterOptions``); refuse what it can never hold.

    ``can_grow``: the cluster may gain nodes (one we joined): a GPU ask it cannot hold yet is waited for,
    not refused. ``asked_gpus``: the job asked for a GPU device, so ``--gpus-per-worker`` defaults to 1.
    """
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    nodes = nodes if nodes is not None else [resources]
    if opts.gpus_per_worker is not None:
        gpw = opts.gpus_per_worker
    else:
        gpw = 1.0 if gpus >= 1 or asked_gpus else 0.0
        if gpw == 0:
            log.warning("the cluster has no GPU: CPU workers (give --gpus-per-worker 1 to wait for GPU nodes)")
    if gpw > 0 and gpus < gpw and not can_grow:
        raise ValueError(f"--gpus-per-worker {gpw:g} but the cluster has {gpus:g} GPUs and cannot grow (a local "
                         f"Ray); valid: 0 (CPU workers) or a value <= {gpus:g}, or --address of an autoscaling cluster")
    if opts.workers is not None:
        workers = opts.workers
        if gpw > 0 and workers * gpw > gpus and not can_grow:
            raise ValueError(f"--workers {workers} x --gpus-per-worker {gpw:g} needs {workers * gpw:g} GPUs; the "
                             f"cluster has {gpus:g}; valid: --workers <= {int(gpus // gpw)}")
    else:
        workers = max(1, int(gpus // gpw)) if gpw > 0 else max(1, int(cpus) // 2)
    cpw = opts.cpus_per_worker
    if cpw is None:
        cpw = (gpu_worker_cpus(nodes, gpw) or MIN_CPUS) if gpw > 0 else CPU_WORKER_CPUS
    return PoolOptions(workers=workers, gpus_per_worker=gpw, cpus_per_worker=cpw, retries=opts.retries,
                       torch_threads=opts.torch_threads, shard_timeout=opts.shard_timeout,
                       start_timeout=opts.start_timeout).validate()


def pool_options_for(ray, opts, cfg: DreamConfig, can_grow: bool) -> PoolOptions:
    """The pool's options on the connected cluster; on a growable one, waits for the first GPU node."""
    nodes = alive_node_resources(ray)
    asked_gpus = cfg.device.startswith("cuda")
    pool_opts = resolve_pool_options(opts, ray.cluster_resources(), nodes, can_grow, asked_gpus)
    gpw = pool_opts.gpus_per_worker
    if gpw > 0 and can_grow:
        try:
            nodes = wait_for_gpu_nodes(ray, pool_opts.workers, gpw, opts.cpus_per_worker, opts.start_timeout)
        except RuntimeError:
            request_bundles(ray, [])  # withdraw the ask: this job will not use it
            raise
        if opts.cpus_per_worker is None:  # sized from the GPU nodes that came up
            pool_opts = dataclasses.replace(pool_opts, cpus_per_worker=gpu_worker_cpus(nodes, gpw) or MIN_CPUS)
    log.info("pool: %d worker(s) x (%g GPU, %g CPU)", pool_opts.workers, gpw, pool_opts.cpus_per_worker)
    return pool_opts


__all__ = ["pool_options_for", "resolve_pool_options"]
