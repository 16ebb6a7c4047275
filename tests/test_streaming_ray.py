"""Streaming mode on Ray (`data.mode: stream`): fields read by Ray tasks in chunks, every worker's
shard spilled to its local disk, the latent cache streamed from its files. A training worker is
SIGKILLed mid-autoencoder and again mid-operator (after a mid-epoch checkpoint); Ray restarts the
group, each stage resumes at its checkpoint's micro-batch, and the run ends with the weights of an
uninterrupted streamed run. The killed workers' spills are removed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from test_fault_tolerance import alive, digests, driver, driver_env, newest_registered, summary_of, wait_for

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.cluster]


def streamed(name: str, storage: Path, smoke_data: Path, spill: Path) -> list[str]:
    return driver(name, storage, smoke_data) + [
        "--set", "data.mode=stream", "--set", "data.chunk_trajectories=5", "--set", f"data.spill_dir={spill}",
        # Tiny's epochs last ~1 s, after ~40 s of stage set-up: its 2 autoencoder and 4 operator epochs
        # are over before a kill aimed at them lands. 20 and 30 leave each stage ~25 s of training.
        "--set", "stages.autoencoder.epochs=20", "--set", "stages.operator.epochs=30",
    ]  # fmt: skip


def mid_epoch_checkpoint(run: Path, stage: str) -> bool:
    """Ray has registered a checkpoint taken inside an epoch (one only written to disk may not be
    handed back on restart: a kill before its registration restarts the stage from scratch)."""
    try:
        newest = newest_registered(run, stage)
        return json.loads((newest / "manifest.json").read_text()).get("micro", 0) > 0
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return False  # no snapshot yet, or one being written


def test_a_streamed_run_resumes_bit_identically_after_worker_kills(ray_session, smoke_data, tmp_path):
    env, spill = driver_env(ray_session), tmp_path / "spill"
    ref = subprocess.run(streamed("reference", tmp_path, smoke_data, spill), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert ref.returncode == 0, (ref.stdout + ref.stderr)[-3000:]
    assert "data streamed from the files" in ref.stdout
    reference = summary_of(tmp_path / "reference")
    assert reference["data_mode"] == "stream"

    run, out = tmp_path / "killed", tmp_path / "killed-driver.log"
    with out.open("w") as sink:
        p = subprocess.Popen(streamed("killed", tmp_path, smoke_data, spill), cwd=ROOT, env=env, stdout=sink,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    wait_for(lambda: mid_epoch_checkpoint(run, "autoencoder"), 900, "a mid-epoch autoencoder checkpoint", p)
    os.kill(alive("RayTrainWorker", other_jobs=True)[0].pid, signal.SIGKILL)
    wait_for(lambda: mid_epoch_checkpoint(run, "operator"), 900, "a mid-epoch operator checkpoint", p)
    os.kill(alive("RayTrainWorker", other_jobs=True)[0].pid, signal.SIGKILL)
    assert p.wait(timeout=1200) == 0, out.read_text()[-3000:]

    log = out.read_text()
    resumes = re.findall(r"\[(\w+)\] resumed at epoch \d+, micro-batch (\d+) \(world size 2 -> 2\)", log)
    assert {stage for stage, _ in resumes} == {"autoencoder", "operator"}, log[-3000:]
    assert any(int(micro) > 0 for _, micro in resumes)  # at least one resume landed mid-epoch
    summary = summary_of(run)
    assert summary["stages"]["autoencoder"]["restarts"] >= 1 and summary["stages"]["operator"]["restarts"] >= 1
    assert digests(summary) == digests(reference)
    assert summary["eval"]["nRMSE"] == reference["eval"]["nRMSE"]
    leftover = [p.name for p in spill.iterdir()] if spill.exists() else []
    assert not leftover, f"spilled shards left behind: {leftover}"
