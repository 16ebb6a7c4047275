"""A run survives what clusters do to it and ends with the same weights as one never interrupted:
a SIGKILLed training worker, a SIGTERM (preemption: checkpoint and exit 143), a SIGKILLed driver
re-run with the same command, and a truncated newest checkpoint. The blows land on one run in
turn, so the suite pays for two pipelines instead of five."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ups.stages import registry

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
pytestmark = pytest.mark.ray


def digests(summary: dict) -> dict[str, str | None]:
    return {s: summary["stages"][s].get("weights_sha256") for s in registry.names()}


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll until `predicate()`; fail at once if `proc` (the driver) exits first. `timeout` only
    guards against a hang: it is generous, so a slow or busy machine does not change the verdict."""
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def checkpoints(run: Path, stage: str) -> list[Path]:
    return sorted((run / "ray" / stage).glob("checkpoint_2*"))


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ft")


def driver(name: str, storage: Path, smoke_data: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ray_jobs.train",
        "--config",
        str(TINY),
        "--set",
        f"data.path={smoke_data}",
        "--name",
        name,
        "--storage",
        str(storage),
    ]


def driver_env(ray_session) -> dict:
    # The re-run joins the shared test cluster, like a job resubmitted to a long-lived cluster.
    return {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "PYTHONPATH": str(ROOT)}


def alive(class_name: str, other_jobs: bool = False) -> list:
    import ray
    from ray.util.state import list_actors

    # The session's own address: left to itself the state API may find another test's (stopped) head.
    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
    )
    mine = ray.get_runtime_context().get_job_id()
    return [a for a in actors if a.job_id != mine] if other_jobs else actors


def newest_registered(run: Path, stage: str) -> Path:
    """The checkpoint Ray will hand back on resume (only the snapshot is authoritative)."""
    snapshot = json.loads((run / "ray" / stage / "checkpoint_manager_snapshot.json").read_text())
    return run / "ray" / stage / snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]


def test_one_run_survives_worker_kill_preemption_driver_kill_and_corruption(
    ray_session, tiny_reference, smoke_data, storage
):
    """One run, four blows, same weights as the uninterrupted reference (a submitted job):
    1. a training worker SIGKILLed mid-autoencoder -> Ray restarts the group from the last checkpoint;
    2. SIGTERM to the driver mid-operator -> just-in-time checkpoint, exit 143;
    3. the same command again, then the driver SIGKILLed mid-operator;
    4. its newest registered checkpoint truncated -> the re-run reports it and falls back."""
    cmd, env = driver("chain", storage, smoke_data), driver_env(ray_session)
    run = storage / "chain"

    # The driver's output goes to a file, not a pipe: an unread pipe fills up and blocks the driver
    # on a slow machine, where the console prints more progress lines before each checkpoint.
    out = storage / "chain-driver.log"
    with out.open("w") as sink:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: len(checkpoints(run, "autoencoder")) >= 2, 900, "autoencoder checkpoints", p)
    os.kill(alive("RayTrainWorker", other_jobs=True)[0].pid, signal.SIGKILL)  # (1)
    wait_for(lambda: len(checkpoints(run, "operator")) >= 1, 900, "an operator checkpoint", p)
    p.send_signal(signal.SIGTERM)  # (2)
    p.wait(timeout=600)
    log = out.read_text()
    assert p.returncode == 143, log[-3000:]
    assert "[autoencoder] resumed at epoch" in log and "stop requested: checkpointed at epoch" in log
    summary = summary_of(run)
    assert summary["stages"]["autoencoder"]["restarts"] >= 1
    assert summary["stages"]["operator"]["status"] == "interrupted"

    seen = {c.name for c in checkpoints(run, "operator")}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    new = lambda: len({c.name for c in checkpoints(run, "operator")} - seen) >= 2  # noqa: E731
    wait_for(new, 900, "new operator checkpoints", p)
    p.kill()  # (3)
    p.wait()
    wait_for(lambda: not alive("TrainController", other_jobs=True), 300, "the orphaned controller to go")
    newest = newest_registered(run, "operator")
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])  # (4)

    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "== autoencoder: completed earlier" in log
    assert f"corrupt checkpoint skipped: {newest.name}" in log and "[operator] resumed at epoch" in log
    summary = summary_of(run)
    assert summary["latent_cache"]["reused"] is True
    assert digests(summary) == digests(tiny_reference.summary)
