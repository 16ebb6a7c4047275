"""The pipeline on Ray's real autoscaler: a local cluster with cluster.yaml's node types
(ups/local_cluster.py) that starts with no worker nodes.

- Scale from zero: `ray job submit` of the tiny pipeline makes the autoscaler launch the worker
  nodes it asks for, and a spot reclaim of one of them mid-stage (a drain with a preemption reason
  and a deadline, then the kill) is answered with a checkpoint at the current micro-batch; the
  stage resumes there on a replacement node and ends with the weights of the uninterrupted run.
  `checkpoint.max_failures=0`: the run survives only because the preemption is charged to the
  preemption budget. Idle nodes go after the idle timeout.
- Elastic: `scaling.num_workers: [1, 3]` starts on the first node up and grows as nodes come.

The cluster's processes live in their own process session, apart from the suite's Ray; the
fixture stops them (and only them) at the end.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from ups.local_cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.cluster]

NOTICE = re.compile(r"\[operator\] preemption notice.*checkpointed at epoch (\d+), micro-batch (\d+);")
RESUMED = re.compile(r"\[operator\] resumed at epoch (\d+), micro-batch (\d+) \(world size (\d+) -> (\d+)\)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("local_cluster"))
    c.up(ROOT / "cluster.yaml", cpus_per_node=1, max_nodes=3, idle_timeout_s=15)
    yield c
    c.down()
    assert not c.alive()


SUBMITTED: list[str] = []


@pytest.fixture(autouse=True)
def leave_the_cluster_as_found(cluster):
    """Each test starts on the head alone and leaves no job behind (a failed one would hold nodes)."""
    wait(lambda: not cluster.worker_nodes(), 300, "idle worker nodes to go")
    yield
    for job in SUBMITTED:
        cluster.stop_job(job)
    cluster.set_max_nodes(3)


def submit(cluster: LocalCluster, name: str, data: Path, runs: Path, *overrides: str) -> str:
    sets = [a for o in ("scaling.resources={UPS_WORKER: 1}", f"data.path={data}", *overrides) for a in ("--set", o)]
    SUBMITTED.append(name)
    cluster.submit(name, ["--config", "tests/configs/tiny.yaml", *sets, "--name", name, "--storage", f"file://{runs}"])
    return name


def wait(predicate, timeout: float, what: str, every=None) -> None:
    """Poll `predicate()`; `timeout` only guards against a hang (generous: speed never decides)."""
    end = time.time() + timeout
    while time.time() < end:
        if every is not None:
            every()
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


def succeeded(cluster: LocalCluster, job: str) -> str:
    logs = cluster.job_logs(job)
    assert cluster.job_status(job) == "SUCCEEDED", logs[-4000:]
    return logs


def test_a_job_scales_from_zero_and_survives_a_spot_reclaim_bit_identical(
    cluster, smoke_data, tiny_reference, tmp_path
):
    assert cluster.worker_nodes() == []  # the head alone: every worker node comes from the autoscaler
    submitted = time.time()
    job = submit(cluster, "spot", smoke_data, tmp_path, "checkpoint.max_failures=0")
    seen: set[str] = set()

    def watch() -> None:
        seen.update(n.node_id for n in cluster.worker_nodes())

    # Preempt a worker node once the operator has finished its first epoch (mid-stage).
    wait(lambda: "[operator] epoch 1/4  train_loss" in cluster.job_logs(job) or cluster.job_done(job),
         900, "the operator's first epoch", every=watch)  # fmt: skip
    assert not cluster.job_done(job), cluster.job_logs(job)[-4000:]
    victim = cluster.training_nodes()[0].node_id
    cluster.preempt(victim, deadline_s=15)  # the notice, then the node's end 15 s later
    assert victim not in {n.node_id for n in cluster.worker_nodes()}
    wait(lambda: cluster.job_done(job), 900, "the job", every=watch)
    logs = succeeded(cluster, job)

    assert len(seen) >= 3, seen  # two launched from zero for two workers, one more replacing the victim
    summary = json.loads((tmp_path / "spot" / "summary.json").read_text())
    notice = NOTICE.search(logs)
    resumed = RESUMED.search(logs)
    assert notice and resumed, logs[-4000:]
    epoch, micro = notice.groups()
    assert micro != "0" and resumed.groups() == (epoch, micro, "2", "2"), logs[-4000:]  # not a micro-batch redone
    op = summary["stages"]["operator"]
    assert op["restarts"] == 1 and op["world_sizes"] == [2, 2], op
    digests = {s: summary["stages"][s]["weights_sha256"] for s in ("autoencoder", "operator")}
    assert digests == {s: tiny_reference.summary["stages"][s]["weights_sha256"] for s in digests}
    print(f"submit -> first step: {summary['stages']['autoencoder']['first_step_unix'] - submitted:.1f} s")

    wait(lambda: not cluster.worker_nodes(), 300, "idle worker nodes to go")  # idle_timeout_s=15


def test_an_elastic_run_starts_on_one_node_and_grows_as_the_autoscaler_adds_nodes(cluster, smoke_data, tmp_path):
    # One node allowed at first, three once training runs: capacity that arrives mid-run (spot
    # capacity coming back). Left to itself, the autoscaler brings all three nodes up before the
    # first worker group starts, and nothing would grow.
    cluster.set_max_nodes(1)
    # Divisible by 1, 2 and 3 workers: the global batch stays 24 whatever the group's size. The
    # stage is long next to what growing takes (an epoch is about a second on one worker; a node
    # comes up and the group restarts in about 20): a slower machine slows both alike.
    job = submit(cluster, "grow", smoke_data, tmp_path, "scaling.num_workers=[1, 3]", "training.batch_size=24",
                 "scaling.elastic_resize_interval_s=5", "stages.autoencoder.epochs=60",
                 "stages.operator.epochs=1")  # fmt: skip
    wait(lambda: "[autoencoder] epoch 1/60  train_loss" in cluster.job_logs(job) or cluster.job_done(job),
         900, "the first epoch")  # fmt: skip
    assert len(cluster.worker_nodes()) == 1
    cluster.set_max_nodes(3)
    wait(lambda: cluster.job_done(job), 900, "the job")
    logs = succeeded(cluster, job)
    assert re.search(r"\[autoencoder\] resumed at epoch \d+, micro-batch 0 \(world size 1 -> [23]\)", logs), logs
    ae = json.loads((tmp_path / "grow" / "summary.json").read_text())["stages"]["autoencoder"]
    sizes = ae["world_sizes"]
    assert ae["status"] == "completed" and sizes[0] == 1 and max(sizes) > 1 and ae["restarts"] >= 1, ae
