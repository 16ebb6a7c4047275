"""Connecting to Ray: an embedded local Ray when RAY_ADDRESS is unset, the cluster when it is set.

On a small machine the embedded Ray gets explicit logical CPUs (enough for the training workers
plus Ray Data, which needs CPUs left over after the workers or it waits forever) and Ray Data gets
a CPU budget, so trainers and data pipelines do not starve each other.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ups.config import Config

# Train V2 settings that make a small local run responsive; a cluster keeps its own.
_LOCAL_ENV = {
    # How often the controller polls the worker group. It also registers the checkpoints workers
    # reported at that poll: at Ray's default of 2 s a worker killed within 2 s of writing one
    # resumed from the one before (tests/test_fault_tolerance.py saw the autoencoder start over),
    # though on the ~10 ms smoke step 2 s lifted the Ray/no-Ray ratio 3-7 points
    # (bench/RESULTS.md). Losing less on a kill wins here.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # The watcher reports cloud nodes being preempted: nothing to watch on one machine, and it is
    # one more actor process per stage on a small box.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray starts its workers at nice 15 so that its own daemons stay responsive on a busy node. On
    # a laptop the training worker *is* the work: niced, its torch threads lose the CPU to the
    # raylet, GCS and dashboard (nice 0) at every OpenMP barrier, and a step at 2 threads ran at
    # 0.75x the same step outside Ray (bench/RESULTS.md, "Ray workers at nice 15"). Nice 0 for
    # the embedded Ray's workers; a cluster keeps Ray's default.
    "RAY_worker_niceness": "0",
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
    "RAY_DATA_LOGGING_CONFIG": str(Path(__file__).with_name("ray_data_logging.yaml")),
}


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


def address_problem(address: str) -> str | None:
    """What is wrong with `address` as RAY_ADDRESS (None: Ray can use it): `auto`, `local`, a cluster's
    GCS `host:port`, or a client address `ray://host[:port]`. A dashboard's `http://` address (what
    `ray job submit` takes) is the usual mix-up."""
    if address in ("auto", "local"):
        return None
    proto, sep, rest = address.partition("://")
    if sep:
        if proto in ("http", "https"):
            return "an HTTP address is the dashboard's (for `ray job submit`); a driver needs the GCS host:port"
        if proto != "ray":  # a third-party client, `<module>://...`, is a module of that name
            ok = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", proto) and importlib.util.find_spec(proto) is not None
            return None if ok else f"unknown protocol {proto!r} (use host:port or ray://host:port)"
        return _host_port_problem(rest, port_required=False)
    return _host_port_problem(address, port_required=True)


def _host_port_problem(text: str, port_required: bool) -> str | None:
    host, port = text, ""
    if text.startswith("["):  # [IPv6]:port
        end = text.find("]")
        host, port = (text[1:end], text[end + 2 :]) if end > 0 and text[end + 1 : end + 2] in (":", "") else ("", "")
        if end < 0 or not host:
            return "expected [IPv6]:port"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not an IPv6 address"
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host or (not text.startswith("[") and not _HOSTNAME.fullmatch(host)):
        return "expected host:port (the cluster head's GCS address, e.g. 10.0.0.1:6379), auto or ray://host:port"
    if (port or port_required) and not (port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        return f"port {port[:20]!r} is not a number in 1..65535" if port else "needs a port (host:port)"
    return None


def check_address() -> None:
    """RAY_ADDRESS, when set, is an address Ray can use: one line naming it, before Ray is asked."""
    from ups.config import ConfigError

    address = os.environ.get("RAY_ADDRESS")
    if not address:
        return
    problem = address_problem(address)
    if problem:
        from ups.storage import redact

        shown = repr(redact(address))
        shown = shown if len(shown) <= 120 else shown[:115] + "...'"
        raise ConfigError(f"environment: RAY_ADDRESS={shown}: {problem}")


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
    verbose = verbose_ray()
    if not ray.is_initialized():
        if local:
            for k, v in _LOCAL_ENV.items():
                os.environ.setdefault(k, v)  # inherited by the raylet and every worker it starts
            # address="local": never attach to some other `ray start`-ed cluster found on this machine.
            with _startup_banner_filtered(verbose):
                ray.init(
                    address="local",
                    num_cpus=cfg.ray.num_cpus or local_cpus(cfg, trials),
                    include_dashboard=cfg.ray.dashboard,
                    dashboard_host="127.0.0.1",
                    object_store_memory=cfg.ray.object_store_mb * 2**20 if cfg.ray.object_store_mb else None,
                    # The custom resources workers ask for (a node-type label on a cluster): this machine
                    # is every node type at once.
                    resources={
                        k: math.ceil(v * max(cfg.scaling.world_sizes) * max(trials, 1))
                        for k, v in cfg.scaling.resources.items()
                    },
                    configure_logging=False,
                    # Workers' own output (Ray's, and tracebacks) stays in the session's log files;
                    # what the user should see reaches the driver as events (ups/events.py).
                    log_to_driver=verbose,
                )
        else:
            ray.init(log_to_driver=verbose)
    configure_data(cfg, local)
    return local


def verbose_ray() -> bool:
    """`--verbose` (UPS_VERBOSE=1): Ray's own console output comes back."""
    return os.environ.get("UPS_VERBOSE", "") not in ("", "0")


def logs_dir() -> str | None:
    """Where this driver's Ray writes its logs (None when that is on a remote head)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_logs_dir_path() if node is not None else None


@contextlib.contextmanager
def _startup_banner_filtered(verbose: bool) -> Iterator[None]:
    """Drop Ray's start-up notice about token authentication, which its C++ core writes straight to
    stderr on every local start; everything else written there meanwhile is passed on."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith("Token authentication is enabled for this Ray cluster"):
                    sys.stderr.write(line)
            sys.stderr.flush()


class DropNotices(logging.Filter):
    """Ray Data's console notices that the project's own settings cause (used by ray_data_logging.yaml)."""

    NOTICES = ("Progress bars disabled", "Progress bars for operators disabled")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTICES)


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
