"""Connecting to Ray: an embedded local Ray when RAY_ADDRESS is unset, the cluster when it is set.

On a small machine the embedded Ray gets explicit logical CPUs (enough for the training workers
plus Ray Data, which needs CPUs left over after the workers or it waits forever) and Ray Data gets
a CPU budget, so trainers and data pipelines do not starve each other.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from ups.config import Config

# Train V2 settings that make a small local run responsive; a cluster keeps its own.
_LOCAL_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # The watcher reports cloud nodes being preempted: nothing to watch on one machine, and it is
    # one more actor process per stage on a small box.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
    "RAY_DATA_LOGGING_CONFIG": str(Path(__file__).with_name("ray_data_logging.yaml")),
}


def local_cpus(cfg: Config, trials: int = 0) -> int:
    """Logical CPUs for an embedded Ray: each concurrent run (a sweep trial, or the one pipeline)
    needs its workers, Ray Data and an evaluation task at once."""
    workers = max(cfg.scaling.world_sizes) * cfg.scaling.cpus_per_worker
    per_run = workers + cfg.ray.data_cpus + 1
    if trials:
        per_run += cfg.sweep.trial_cpus + cfg.ray.data_cpus  # a trial also holds its own bundles
    return max(os.cpu_count() or 1, math.ceil(per_run * max(trials, 1)))


def connect(cfg: Config, trials: int = 0) -> bool:
    """Start or join Ray; returns True when this process started an embedded local Ray.

    `trials`: concurrent sweep trials the embedded Ray must hold at once (0 for a single run).
    """
    import ray

    local = not os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if local:
            for k, v in _LOCAL_ENV.items():
                os.environ.setdefault(k, v)  # inherited by the raylet and every worker it starts
            # address="local": never attach to some other `ray start`-ed cluster found on this machine.
            ray.init(
                address="local",
                num_cpus=cfg.ray.num_cpus or local_cpus(cfg, trials),
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                object_store_memory=cfg.ray.object_store_mb * 2**20 if cfg.ray.object_store_mb else None,
                # The custom resources workers ask for (a node-type label on a cluster): this machine
                # is every node type at once.
                resources={
                    k: v * max(cfg.scaling.world_sizes) * max(trials, 1) for k, v in cfg.scaling.resources.items()
                },
                configure_logging=False,
                log_to_driver=True,
            )
        else:
            ray.init(log_to_driver=True)
    configure_data(cfg, local)
    return local


def quiet_train_logs() -> None:
    """Silence Ray Train's per-report INFO line, which ignores LoggingConfig in 2.60 because its
    logger is named after the module's file path instead of `ray.train.*`."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def configure_data(cfg: Config, local: bool) -> None:
    """Ray Data settings for this driver: no progress bars, blocks in order so shards do not depend on
    timing, and locally a CPU budget so data pipelines cannot starve the training workers."""
    from ray.data import DataContext, ExecutionResources

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True  # deterministic blocks -> deterministic shards
    if local:
        ctx.execution_options.resource_limits = ExecutionResources(cpu=cfg.ray.data_cpus)
