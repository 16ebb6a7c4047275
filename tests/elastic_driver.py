"""Runs an elastic tiny pipeline on a simulated 3-node cluster and removes a worker node mid-stage.

Executed by test_elastic.py in its own process: a `ray.cluster_utils.Cluster` cannot share a
process with the suite's local Ray. Prints one JSON line with what happened.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "10")

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from ups import pipeline  # noqa: E402
from ups.config import load_config  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(data: str, storage: str) -> None:
    # Its own dashboard port: the suite's session Ray already holds the default 8265.
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True, "dashboard_port": free_port()}
    )
    nodes = [cluster.add_node(num_cpus=1, resources={"worker_slot": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=True)
    # A registered node's resources reach the scheduler's view a moment later; an elastic run started
    # before both worker slots are visible would start on one worker and the test would measure timing.
    end = time.time() + 60
    while ray.available_resources().get("worker_slot", 0) < 2 and time.time() < end:
        time.sleep(0.2)
    loaded = load_config(
        ROOT / "tests" / "configs" / "tiny.yaml",
        [
            f"data.path={data}",
            "scaling.num_workers=[1, 2]",
            "scaling.resources={worker_slot: 1}",
            "scaling.elastic_resize_interval_s=5",
            "checkpoint.every_steps=5",
        ],
    )
    out: dict = {}

    def train() -> None:
        try:
            opts = pipeline.PipelineOptions(name="elastic", storage=storage, quiet=True)
            out["summary"] = pipeline.run(loaded, opts).to_dict()  # summary.json's contents
        except Exception as e:  # reported in the JSON line
            out["error"] = repr(e)

    t = threading.Thread(target=train)
    t.start()
    run = Path(storage) / "elastic"
    end = time.time() + 300
    while time.time() < end and len(list((run / "ray" / "autoencoder").glob("checkpoint_2*"))) < 2:
        time.sleep(0.2)
    cluster.remove_node(nodes[1])  # a worker node goes away mid-stage (from the main thread)
    t.join(timeout=600)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if out.get("summary") else []
    print(
        "ELASTIC "
        + json.dumps(
            {
                "error": out.get("error"),
                "stages": {
                    k: {"world_sizes": v.get("world_sizes"), "restarts": v.get("restarts"), "status": v.get("status")}
                    for k, v in (out.get("summary") or {}).get("stages", {}).items()
                },
                "world_sizes": [[r["stage"], r["epoch"], r["world_size"]] for r in rows],
                "eval_nRMSE": (out.get("summary") or {}).get("eval", {}).get("nRMSE"),
            }
        ),
        flush=True,
    )
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
