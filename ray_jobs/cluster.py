"""A local autoscaling Ray cluster with cluster.yaml's node types: `python -m ray_jobs.cluster COMMAND`.

    python -m ray_jobs.cluster up --dir .cluster           # a head, no worker nodes, Ray's autoscaler
    export RAY_ADDRESS=<dashboard URL it prints> RAY_AUTH_MODE=token
    ray job submit --working-dir . --runtime-env runtime_env.yaml -- \\
        python -m ray_jobs.train --config configs/smoke.yaml --set 'scaling.resources={UPS_WORKER: 1}' \\
        --storage file://$PWD/runs                         # the autoscaler launches the worker nodes
    python -m ray_jobs.cluster preempt --dir .cluster --deadline-s 20   # a spot reclaim of one worker node
    python -m ray_jobs.cluster down --dir .cluster         # stops this cluster's processes, no other Ray's

Linux only (the nodes are found through /proc). See ups/local_cluster.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ups.local_cluster import ClusterError, LocalCluster


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.cluster", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the head and its autoscaler (no worker nodes yet)")
    up.add_argument("--cluster-config", type=Path, default=Path("cluster.yaml"), help="node types from here")
    up.add_argument("--cpus-per-node", type=int, default=1, help="CPUs of each worker node (default 1)")
    up.add_argument("--head-cpus", type=int, default=1, help="CPUs of the head (Ray Data, evaluation; default 1)")
    up.add_argument("--max-nodes", type=int, default=3, help="worker nodes at most, per type and in all (default 3)")
    up.add_argument("--idle-timeout-s", type=float, default=20.0, help="an idle worker node goes after this")
    for name, what in [("status", "the worker nodes"), ("down", "stop every process of this cluster")]:
        sub.add_parser(name, help=what)
    for name, what in [("preempt", "a spot reclaim: drain with a preemption reason, kill at the deadline"),
                       ("kill", "a node's processes die at once (no notice)")]:  # fmt: skip
        s = sub.add_parser(name, help=what)
        s.add_argument("--node", help="node id (default: the oldest worker node)")
        if name == "preempt":
            s.add_argument("--deadline-s", type=int, default=20, help="seconds from the notice to the kill")
    for s in sub.choices.values():
        s.add_argument("--dir", type=Path, default=Path(".cluster"), help="the cluster's state folder")
    args = p.parse_args()

    cluster = LocalCluster(args.dir)
    try:
        if args.cmd == "up":
            if not args.cluster_config.is_file():
                raise ClusterError(f"--cluster-config: no such file: {args.cluster_config}")
            for flag in ("cpus_per_node", "head_cpus", "max_nodes"):
                if getattr(args, flag) < 1:
                    raise ClusterError(f"--{flag.replace('_', '-')}: must be >= 1 (got {getattr(args, flag)})")
            info = cluster.up(args.cluster_config, args.cpus_per_node, args.max_nodes, args.idle_timeout_s,
                              args.head_cpus)  # fmt: skip
            types = ", ".join(f"{n} {r}" for n, r in info.node_types.items())
            print(f"local cluster up: head {info.gcs_address}, worker node types {types}, none running yet")
            print(f"submit jobs with: RAY_ADDRESS={info.dashboard_url} RAY_AUTH_MODE=token ray job submit ...")
            print(f"Ray's logs: {info.temp_dir}/session_latest/logs (the autoscaler's: monitor.*)")
        elif args.cmd == "status":
            nodes = cluster.worker_nodes()
            print(f"head {cluster.info.gcs_address}, dashboard {cluster.info.dashboard_url}")
            print(f"{len(nodes)} worker node(s)" + "".join(f"\n  {n.node_type} {n.node_id}" for n in nodes))
        elif args.cmd in ("preempt", "kill"):
            nodes = cluster.worker_nodes()
            node = args.node or (nodes[0].node_id if nodes else None)
            if node is None:
                raise ClusterError("no worker node is running")
            if args.cmd == "preempt":
                print(f"preemption notice to {node}: it goes in {args.deadline_s} s", flush=True)
                cluster.preempt(node, args.deadline_s)
            else:
                cluster.kill_node(node)
            print(f"node {node} killed")
        else:
            cluster.down()
            print("local cluster stopped")
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
