"""The tiny pipeline on Ray's real autoscaler (a local cluster, ups/local_cluster.py): time from
`ray job submit` to the first training step when every worker node comes from zero, and the work
redone after a spot reclaim with notice (a drain with a preemption reason, then the kill) against
a hard node kill (no notice), both at the same place: the operator's second epoch.

Three jobs on one cluster, each waiting for the idle nodes of the one before to go, so each
scales from zero: an uninterrupted one, one whose worker node is reclaimed with a 15 s notice, one
whose worker node is killed. Work redone = micro-batches between where the stage resumed and
where it was when its node went (for the kill, the last progress line before it: a lower bound).
All three must end with the same weights.

    .venv/bin/python bench/autoscale.py
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

# This process's job client talks to the cluster's token-auth head; Ray reads the mode once, when it
# is first imported, so it is set before anything can import ray.
os.environ.setdefault("RAY_AUTH_MODE", "token")

from _common import ROOT, emit, ensure_data, smoke  # noqa: E402

from ups.local_cluster import LocalCluster  # noqa: E402

TINY = ["--config", "tests/configs/tiny.yaml", "--set", "scaling.resources={UPS_WORKER: 1}"]
EPOCH_1_DONE = "[operator] epoch 1/4  train_loss"
PROGRESS = re.compile(r"\[operator\] epoch 2/4  step (\d+)/")
NOTICE = re.compile(r"\[operator\] preemption notice.*checkpointed at epoch (\d+), micro-batch (\d+);")
RESUMED = re.compile(r"\[operator\] resumed at epoch (\d+), micro-batch (\d+)")


def wait(predicate, timeout: float = 1200) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise TimeoutError
        time.sleep(0.2)


def run(cluster: LocalCluster, name: str, runs: Path, data: str, blow: str | None) -> dict:
    wait(lambda: not cluster.worker_nodes())  # from zero
    submitted = time.time()
    cluster.submit(name, [*TINY, "--set", f"data.path={data}", "--name", name, "--storage", f"file://{runs}"])
    first_node: list[float] = []

    def note_first_node() -> None:
        if not first_node and cluster.worker_nodes():
            first_node.append(time.time() - submitted)

    def logs() -> str:
        note_first_node()
        return cluster.job_logs(name)

    def done() -> bool:
        note_first_node()
        return cluster.job_done(name)

    at_kill = None
    if blow:
        wait(lambda: EPOCH_1_DONE in logs() or done())
        victim = cluster.training_nodes()[0].node_id
        if blow == "notice":
            cluster.preempt(victim, deadline_s=15)
        else:
            wait(lambda: PROGRESS.search(logs()) is not None)
            at_kill = int(PROGRESS.findall(logs())[-1])
            cluster.kill_node(victim)
        assert victim not in {n.node_id for n in cluster.worker_nodes()}
    wait(done)
    text = cluster.job_logs(name)
    assert cluster.job_status(name) == "SUCCEEDED", text[-3000:]
    wall = time.time() - submitted
    summary = json.loads((runs / name / "summary.json").read_text())
    out = {
        "wall_s": round(wall, 1),
        "submit_to_first_node_s": round(first_node[0], 1) if first_node else None,
        "submit_to_first_step_s": round(summary["stages"]["autoencoder"]["first_step_unix"] - submitted, 1),
        "operator_weights": summary["stages"]["operator"]["weights_sha256"][:16],
    }
    if blow:
        resumed = RESUMED.findall(text)
        assert resumed, f"{name}: no resumed line in the job's log:\n{text[-4000:]}"
        out["resumed_at_epoch_micro"] = [int(x) for x in resumed[-1]]
        if blow == "notice":
            notice = NOTICE.search(text)
            assert notice
            out["checkpointed_at_notice_epoch_micro"] = [int(x) for x in notice.groups()]
            out["micro_batches_redone"] = int(notice.group(2)) - int(resumed[-1][1])
        else:
            assert at_kill is not None
            out["progress_at_kill_epoch_micro"] = [2, at_kill]
            out["micro_batches_redone_at_least"] = at_kill - int(resumed[-1][1])
    return out


def main() -> None:
    loaded = smoke()
    ensure_data(loaded)
    data = str(ROOT / loaded.cfg.data.paths[0])
    with tempfile.TemporaryDirectory(prefix="ups-bench-autoscale-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        cluster.up(ROOT / "cluster.yaml", cpus_per_node=1, max_nodes=3, idle_timeout_s=15)
        try:
            runs = Path(tmp) / "runs"
            figures = {blow or "uninterrupted": run(cluster, blow or "plain", runs, data, blow)
                       for blow in (None, "notice", "kill")}  # fmt: skip
        finally:
            cluster.down()
    same = len({f["operator_weights"] for f in figures.values()}) == 1
    emit("autoscale", {**figures, "bit_identical": same},
         setup="tests/configs/tiny.yaml, 2 workers x 1 CPU on fake_multinode worker nodes (1 CPU each), "
               "checkpoint.every_steps=10, notice deadline 15 s")  # fmt: skip


if __name__ == "__main__":
    main()
