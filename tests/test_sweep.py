"""Ray Tune sweeps, gating and promotion on a real local Ray:
- a 2-trial sweep on an empty registry promotes its best trial, with its weights copied in,
  while ASHA stops the clearly worse trial early;
- the identical sweep run again is refused with a reason and the champion is unchanged;
- a better candidate, from a sweep interrupted mid-way and resumed with the same command, is
  promoted over the weaker stored champion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ups import sweep
from ups.champions import ChampionStore
from ups.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "tests" / "configs" / "sweep_tiny.yaml"
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweeps")


@pytest.fixture(scope="module")
def first(ray_session, smoke_data, storage) -> dict:
    return sweep.run(load_config(SWEEP, [f"data.path={smoke_data}"]), "s1", str(storage), quiet=True)


def registry(storage: Path, summary: dict) -> ChampionStore:
    from ups.storage import Storage

    return ChampionStore(Storage(str(storage)), summary["family"])


def operator_epoch_done(metrics: Path) -> bool:
    """A trial's operator has finished an epoch (and checkpointed it: every epoch ends with one)."""
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return any(json.loads(line).get("stage") == "operator" for line in lines if line.strip().endswith("}"))


def test_first_sweep_promotes_best_trial_and_asha_stops_the_bad_one(first, storage):
    trials = {t["config"]["model.decoder.depth"]: t for t in first["trials"]}
    assert trials[2]["status"] == "completed"
    assert trials[0]["status"] == "stopped" and trials[0]["epochs"] < 3  # ASHA, at its first rung
    assert first["best"]["trial"] == trials[2]["trial"] and first["promoted"] is True
    assert "empty registry" in first["gate"]["reasons"][0]
    champ = registry(storage, first).champion()
    assert champ.trial == trials[2]["trial"]
    assert Path(champ.checkpoint).is_relative_to(storage / "registry")  # weights copied into the registry
    for stage in ("autoencoder", "operator"):
        assert Path(champ.exports[stage]).exists()
    assert first["champion_test"]["protocol"]["split"] == "test"  # reported, never used to select
    summary = json.loads((storage / "s1" / "sweep_summary.json").read_text())
    assert {"trials", "best", "gate", "promoted", "family"} <= summary.keys()
    # The driver kept when each trial's actor came up, so a trial's start-up can be measured
    # (bench/sweep_startup.py): its first optimizer step comes after it.
    assert all(isinstance(t["started_unix"], float) for t in first["trials"])
    run = json.loads((Path(trials[2]["run"]) / "summary.json").read_text())
    assert run["stages"]["autoencoder"]["first_step_unix"] > trials[2]["started_unix"]


def test_identical_rerun_is_refused_and_champion_unchanged(first, smoke_data, storage):
    before = registry(storage, first).champion()
    again = sweep.run(load_config(SWEEP, [f"data.path={smoke_data}"]), "s1", str(storage), quiet=True)
    assert again["promoted"] is False
    assert "the candidate is the current champion" in again["gate"]["reasons"][0]
    reg = registry(storage, first)
    assert reg.champion() == before
    assert [h["promoted"] for h in reg.history()] == [True, False]


def test_interrupted_better_sweep_resumes_and_is_promoted(first, ray_session, smoke_data, storage):
    cmd = [
        sys.executable,
        "-m",
        "ray_jobs.tune",
        "--config",
        str(SWEEP),
        "--name",
        "s2",
        "--storage",
        str(storage),
        "--set",
        f"data.path={smoke_data}",
        "--set",
        "sweep.space={model.decoder.depth: {grid: [2]}}",
        "--set",
        "stages.autoencoder.epochs=3",
        "--set",
        "stages.operator.epochs=4",
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = storage / "s2" / "trials"
    end = time.time() + 400
    while time.time() < end and not any(operator_epoch_done(m) for m in trials.glob("*/metrics.jsonl")):
        time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)  # the sweep driver dies mid-trial
    p.wait()
    time.sleep(5)  # let Ray tear down the dead driver's actors

    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "sweep s2: resuming" in r.stdout
    summary = json.loads((storage / "s2" / "sweep_summary.json").read_text())
    trial_run = Path(summary["best"]["run"])
    assert json.loads((trial_run / "summary.json").read_text())["stages"]["autoencoder"]["status"] == "completed"
    assert summary["promoted"] is True, summary["gate"]
    assert any(r.startswith("full: nRMSE") for r in summary["gate"]["reasons"])
    reg = registry(storage, summary)
    assert reg.champion().sweep == "s2" and [h["promoted"] for h in reg.history()] == [True, False, True]
