"""A local autoscaling cluster: Ray's own autoscaler on one machine, with cluster.yaml's node types.

Ray ships a node provider for exactly this (`fake_multinode`, enabled by RAY_FAKE_CLUSTER=1): the
autoscaler (the same StandardAutoscaler a cloud head runs) decides to launch or remove a worker
node, and the provider starts or stops a real raylet on this machine. So the head starts with no
worker nodes, and nodes come when jobs ask for resources, go after `idle_timeout_s`, and a node
killed from outside is replaced.

The node types are cluster.yaml's, same names and custom resources (UPS_WORKER, which training
requests per worker instead of GPUs, TRAIN_DRIVER on the head), with their CPUs sized to this
machine and GPUs left out. What a cloud does to a spot node is done by `preempt`: drain the node
with a preemption reason and a deadline (the call autoscaler v2 makes on a spot notice), then kill
its processes at the deadline.

Every process of the cluster runs in one process session (the head is started with setsid, and
everything Ray starts inherits it), so `down` stops this cluster and nothing else: `ray stop
--force` would kill every Ray on the machine, a test session's included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

HEAD_TYPE = "ray.head.default"  # the fake provider's fixed name for the head's type
STATE_FILE = "cluster.json"
# Environment of every process of the cluster. The autoscaler looks every second (a cloud head's
# 5 s is slow for tests), a dead node is noticed after 10 s, and Ray Train's preemption watcher,
# which an embedded local Ray turns off (ups/ray_session.py), is on and polls every second.
CLUSTER_ENV = {
    "RAY_FAKE_CLUSTER": "1",
    "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1",
    "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
# What a process of this machine's other Rays may have set that must not leak into the cluster.
_NOT_INHERITED = ("RAY_ADDRESS", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")


def use_token_auth() -> None:
    """Make this process's Ray clients send the cluster's token (RAY_AUTH_MODE=token unless set).

    The cluster's head has token auth (Ray 2.59+; the token in ~/.ray/auth_token), and a job
    client must send it. Ray reads the mode once, when it is first imported: a process that
    imported ray already must have had RAY_AUTH_MODE=token in its environment (tests/conftest.py
    sets it at import, as the README's `export` does for a shell). Called explicitly, never on
    import of this module.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")


class ClusterError(RuntimeError):
    pass


@dataclass
class ClusterInfo:
    """What `up` wrote to {dir}/cluster.json: how to reach the cluster and how to stop it."""

    gcs_address: str  # for `ray.init(address=...)`, `ray status --address`
    dashboard_url: str  # for `ray job submit --address`
    session_id: int  # the process session every process of this cluster runs in
    temp_dir: str  # Ray's session files and logs
    node_types: dict[str, dict[str, float]]  # worker node type -> its resources

    @classmethod
    def load(cls, folder: Path) -> ClusterInfo:
        path = folder / STATE_FILE
        if not path.exists():
            raise ClusterError(f"{path}: no local cluster here (start one with `python -m ray_jobs.cluster up`)")
        return cls(**json.loads(path.read_text()))


@dataclass
class FakeNode:
    node_id: str  # Ray's node id (hex)
    node_type: str
    pids: list[int]


def node_types(cluster_yaml: Path, cpus_per_node: int, max_nodes: int) -> tuple[dict[str, float], dict[str, Any]]:
    """The head's resources and the worker node types of `cluster_yaml`, sized for this machine:
    same names and custom resources, `cpus_per_node` CPUs, no GPUs, at most `max_nodes` each."""
    cfg = yaml.safe_load(cluster_yaml.read_text())
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]

    def custom(resources: dict[str, Any]) -> dict[str, float]:
        return {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}

    workers = {
        name: {
            "resources": {"CPU": cpus_per_node, **custom(t.get("resources", {})), "object_store_memory": 200 * 2**20},
            "node_config": {},
            "min_workers": t.get("min_workers", 0),
            "max_workers": min(t.get("max_workers", max_nodes), max_nodes),
            **({"priority": t["priority"]} if "priority" in t else {}),
        }
        for name, t in types.items()
        if name != head
    }
    return custom(types[head].get("resources", {})), workers


def autoscaler_config(
    workers: dict[str, Any], head_resources: dict[str, float], max_nodes: int, idle_timeout_s: float, gcs: str
) -> dict[str, Any]:
    """The fake provider's cluster config (the shape of Ray's fake_multi_node/example.yaml, which the
    wheel does not ship)."""
    return {
        "cluster_name": "ups-local",
        "max_workers": max_nodes,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs,
        },
        "auth": {},
        "docker": {},
        "available_node_types": {
            HEAD_TYPE: {"resources": head_resources, "node_config": {}, "max_workers": 0},
            **workers,
        },
        "head_node_type": HEAD_TYPE,
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands")},
        **{k: [] for k in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def free_port() -> int:
    """A free TCP port outside Ray's default worker-port range (10002-19999)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if not 10000 <= port < 20000:
            return port
    raise ClusterError("no free port outside 10000-19999")


def cluster_env() -> dict[str, str]:
    """The environment of the cluster's processes and of clients talking to it: this virtualenv's
    `python` and `ray` first on PATH (a job's entrypoint runs in a shell of the head), Ray 2.59+'s
    token auth (the token in ~/.ray/auth_token), no other cluster's address."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"
    return {**env, **CLUSTER_ENV}


class LocalCluster:
    """One local autoscaling cluster, its state in `folder` (cluster.json, the autoscaler config)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()

    @property
    def info(self) -> ClusterInfo:
        return ClusterInfo.load(self.folder)

    def up(
        self, cluster_yaml: Path, cpus_per_node: int = 1, max_nodes: int = 3, idle_timeout_s: float = 20.0,
        head_cpus: int = 1,
    ) -> ClusterInfo:  # fmt: skip
        """Start the head (no worker nodes) with the autoscaler; returns once it answers."""
        if (self.folder / STATE_FILE).exists() and self.alive():
            raise ClusterError(f"{self.folder}: a local cluster is already running (stop it with `down`)")
        import ray._private.services

        self.folder.mkdir(parents=True, exist_ok=True)
        head_resources, workers = node_types(cluster_yaml, cpus_per_node, max_nodes)
        ip = ray._private.services.get_node_ip_address()
        port, dash, agent, client = (free_port() for _ in range(4))
        gcs = f"{ip}:{port}"
        autoscaler = self.folder / "autoscaler.json"
        autoscaler.write_text(json.dumps(autoscaler_config(workers, head_resources, max_nodes, idle_timeout_s, gcs)))
        # Short: Ray's socket paths live under it and must stay within the OS's 107 characters.
        temp_dir = f"/tmp/ups-{hashlib.sha1(str(self.folder).encode()).hexdigest()[:8]}"
        cmd = [
            str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
            f"--num-cpus={head_cpus}", f"--resources={json.dumps(head_resources)}",
            "--object-store-memory", str(400 * 2**20),
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
            f"--temp-dir={temp_dir}", f"--autoscaling-config={autoscaler}", "--disable-usage-stats",
        ]  # fmt: skip
        log = self.folder / "ray_start.log"
        with open(log, "w") as out:
            proc = subprocess.run(cmd, env=cluster_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if proc.returncode != 0:
            last = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-3:]
            raise ClusterError(f"`ray start --head` failed ({proc.returncode}): {' | '.join(last)} (all of it: {log})")
        info = ClusterInfo(gcs, f"http://127.0.0.1:{dash}", self._session_of(port), temp_dir,
                           {name: t["resources"] for name, t in workers.items()})  # fmt: skip
        (self.folder / STATE_FILE).write_text(json.dumps(asdict(info), indent=2))
        return info

    def set_max_nodes(self, max_nodes: int) -> None:
        """Change how many worker nodes the autoscaler may run (per type and in all), as `ray up` of
        an edited cluster.yaml would: the autoscaler rereads its config on every update. Raising it
        mid-run is capacity arriving (spot capacity coming back); lowering it removes no node."""
        path = self.folder / "autoscaler.json"
        cfg = json.loads(path.read_text())
        cfg["max_workers"] = max_nodes
        for name, t in cfg["available_node_types"].items():
            if name != HEAD_TYPE:
                t["max_workers"] = max_nodes
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg))
        tmp.replace(path)  # the autoscaler never reads half a file

    def _session_of(self, port: int) -> int:
        """The process session of the head's GCS server (the one listening on `port`)."""
        for pid in _pids():
            cmdline = _read(pid, "cmdline").split("\0")
            if cmdline and cmdline[0].endswith("gcs_server") and f"--gcs_server_port={port}" in cmdline:
                return os.getsid(pid)
        raise ClusterError(f"the head's GCS server (port {port}) is not running")

    def processes(self) -> list[int]:
        sid = self.info.session_id
        out = []
        for pid in _pids():
            with contextlib.suppress(OSError):
                if os.getsid(pid) == sid and pid != os.getpid():
                    out.append(pid)
        return out

    def alive(self) -> bool:
        try:
            return bool(self.processes())
        except ClusterError:
            return False

    def worker_nodes(self) -> list[FakeNode]:
        """The worker nodes running now, found from their processes (each carries its node id and
        type in its environment, as the fake provider started it), oldest first."""
        nodes: dict[str, FakeNode] = {}
        for pid in self.processes():
            env = dict(kv.split("=", 1) for kv in _read(pid, "environ").split("\0") if "=" in kv)
            node_id, node_type = env.get("RAY_OVERRIDE_NODE_ID_FOR_TESTING"), env.get("RAY_NODE_TYPE_NAME")
            if node_id and node_type:
                nodes.setdefault(node_id, FakeNode(node_id, node_type, [])).pids.append(pid)
        return sorted(nodes.values(), key=lambda n: n.node_id)

    def training_nodes(self) -> list[FakeNode]:
        """The worker nodes that host a Ray Train worker now (the autoscaler may have brought up
        more nodes than the group uses: reclaiming an idle one tests nothing), oldest first."""
        return [n for n in self.worker_nodes() if any("RayTrainWorker" in _read(p, "cmdline") for p in n.pids)]

    def kill_node(self, node_id: str) -> None:
        """What a cloud does at a spot deadline (or a hardware fault does at any time): the node's
        processes die at once."""
        node = self._node(node_id)
        if node is None:
            raise ClusterError(f"no worker node {node_id} in this cluster")
        end = time.time() + 30
        while node is not None:  # until none is left: a raylet may be starting a worker meanwhile
            for pid in node.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.time() > end:
                raise ClusterError(f"node {node_id}: processes {node.pids} survive SIGKILL")
            time.sleep(0.1)
            node = self._node(node_id)

    def _node(self, node_id: str) -> FakeNode | None:
        return next((n for n in self.worker_nodes() if n.node_id == node_id), None)

    def drain(self, node_id: str, deadline_s: int, reason: str = "DRAIN_NODE_REASON_PREEMPTION") -> None:
        """Tell Ray Core the node goes in `deadline_s` seconds (no new work is scheduled on it, and
        Ray Train's preemption watcher sees the notice)."""
        cmd = [str(Path(sys.executable).parent / "ray"), "drain-node", "--address", self.info.gcs_address,
               "--node-id", node_id, "--reason", reason, "--reason-message", "spot reclaim (local cluster)",
               "--deadline-remaining-seconds", str(deadline_s)]  # fmt: skip
        r = subprocess.run(cmd, env=cluster_env(), capture_output=True, text=True)
        if r.returncode != 0:
            raise ClusterError(f"ray drain-node {node_id}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")

    def preempt(self, node_id: str, deadline_s: int) -> None:
        """A spot reclaim: the notice (a drain with a preemption reason and a deadline), then the
        node's end at the deadline."""
        self.drain(node_id, deadline_s)
        time.sleep(deadline_s)
        # A drained raylet may already have ended itself (once Ray Train moved its workers off it).
        if self._node(node_id) is not None:
            self.kill_node(node_id)

    # -- jobs, as a user submits them ------------------------------------------------------------

    def submit(
        self, submission_id: str, train_args: list[str], working_dir: Path | None = None, module: str = "ray_jobs.train"
    ) -> None:
        """`ray job submit --no-wait` of `python -m MODULE TRAIN_ARGS` (ray_jobs.train unless told) with
        runtime_env.yaml, as the README types it (the job's `python` is this virtualenv's: first on the
        cluster's PATH).

        The working dir is passed in place (`local://ROOT`), not uploaded. Every node of this cluster
        shares this machine's filesystem and one session dir, and each new node's runtime-env agent
        re-unpacks an uploaded package with `overwrite=True`: an `rm -rf` of the directory that is the
        cwd of workers already running on the other nodes. A worker importing torch at that moment
        dies (oneMKL cannot load libtorch_cpu.so with no cwd). Real nodes have their own disks, so
        on a real cluster the README's upload is right; here the checkout already is on every node."""
        root = (working_dir or Path(__file__).resolve().parents[1]).resolve()
        cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--no-wait", "--submission-id",
               submission_id, "--address", self.info.dashboard_url, "--working-dir", f"local://{root}",
               "--runtime-env", str(root / "runtime_env.yaml"), "--", "python", "-m", module,
               *train_args]  # fmt: skip
        r = subprocess.run(cmd, env=cluster_env(), capture_output=True, text=True, cwd=root)
        if r.returncode != 0:
            raise ClusterError(f"ray job submit {submission_id}: {(r.stderr or r.stdout).strip()[-2000:]}")

    def _jobs(self) -> Any:
        use_token_auth()
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.info.dashboard_url)

    def job_status(self, submission_id: str) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        return str(self._jobs().get_job_status(submission_id).value)

    def job_done(self, submission_id: str) -> bool:
        return self.job_status(submission_id) in ("SUCCEEDED", "FAILED", "STOPPED")

    def job_logs(self, submission_id: str) -> str:
        return str(self._jobs().get_job_logs(submission_id))

    def stop_job(self, submission_id: str) -> None:
        with contextlib.suppress(Exception):  # already finished, or never submitted
            self._jobs().stop_job(submission_id)

    def down(self, grace_s: float = 5.0) -> None:
        """Stop every process of this cluster (SIGTERM, then SIGKILL after `grace_s`)."""
        try:
            pids = self.processes()
        except ClusterError:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            end = time.time() + grace_s
            while time.time() < end and (pids := self.processes()):
                time.sleep(0.2)
            if not pids:
                break
        (self.folder / STATE_FILE).unlink(missing_ok=True)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _read(pid: int, what: str) -> str:
    try:
        with open(f"/proc/{pid}/{what}", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""
