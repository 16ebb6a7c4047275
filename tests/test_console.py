"""The driver's console and the run's one W&B run, without Ray: what the user sees and syncs."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest

from ups import pipeline
from ups.backend.local_backend import LocalBackend
from ups.config import load_config
from ups.console import Console
from ups.events import EpochRow, Say, StepProgress, from_wire, to_wire

sys.path.insert(0, str(Path(__file__).parent))
import wandb_offline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[")


def progress(step: int) -> StepProgress:
    return StepProgress("operator", 2, 8, step, 100, 0.25, 1234.0, 75.0)


def test_events_cross_the_wire_unchanged():
    for e in (Say("operator", "resumed"), EpochRow("ae", {"epoch": 1, "train_loss": 0.5}, "val", 3), progress(5)):
        assert from_wire(json.loads(json.dumps(to_wire(e)))) == e


def test_plain_progress_when_not_a_terminal_is_rate_limited_and_has_no_control_codes():
    out = io.StringIO()  # not a tty
    c = Console(stream=out, interval_s=3600)
    for step in range(1, 50):
        c.handle(progress(step))  # the first is shown, the rest fall inside the interval
    c.handle(Say("operator", "resumed at epoch 2"))
    c.handle(EpochRow("operator", {"epoch": 2, "train_loss": 0.1, "val_m": 0.2, "lr": 1e-3, "epoch_time_s": 3.0},
                      "val_m", 8))  # fmt: skip
    lines = out.getvalue().splitlines()
    assert lines == [
        "[operator] epoch 2/8  step 1/100 (1%)  loss=0.25  1234 samples/s  epoch ETA 1m15s",
        "[operator] resumed at epoch 2",
        "[operator] epoch 2/8  train_loss=0.1  val_m=0.2  lr=1.00e-03  3.0s",
    ]
    assert not ANSI.search(out.getvalue())


def test_a_phase_longer_than_the_interval_reports_while_it_runs():
    out = io.StringIO()
    c = Console(stream=out, interval_s=0.05)
    import time

    with c.phase("latent cache"):
        deadline = time.monotonic() + 30
        while "so far" not in out.getvalue():  # a tick must come while the phase is still running
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert out.getvalue().splitlines()[-1].startswith("== latent cache: ")


def test_quiet_console_prints_nothing():
    out = io.StringIO()
    c = Console(stream=out, quiet=True)
    c.handle(Say("x", "y"))
    c.handle(progress(1))
    with c.phase("p"):
        pass
    assert out.getvalue() == ""


class StopAfterFirstGroup(LocalBackend):
    """The driver 'dies' after the autoencoder's group: the next group is refused as on SIGTERM."""

    def train(self, group, jobs, data, cfg, callbacks):
        out = super().train(group, jobs, data, cfg, callbacks)
        self.reason = "test"
        return out


def test_one_wandb_run_whose_resumed_segment_continues_the_steps(tmp_path, smoke_data, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [f"data.path={smoke_data}", "logging.wandb.enabled=true", "eval.plots=true"]
    loaded = load_config(ROOT / "tests" / "configs" / "tiny.yaml", overrides)
    opts = dict(name="w", storage=str(tmp_path))
    with pytest.raises(pipeline.Preempted):
        pipeline.run(loaded, pipeline.PipelineOptions(**opts, backend=StopAfterFirstGroup(device="cpu")))
    first = wandb_offline.runs(tmp_path / "w")
    assert len(first) == 1 and any(k.startswith("train/autoencoder/") for k in first[0].history_keys)
    pipeline.run(loaded, pipeline.PipelineOptions(**opts, backend=LocalBackend(device="cpu")))
    out = capsys.readouterr().out
    segments = wandb_offline.runs(tmp_path / "w")
    wandb_id = json.loads((tmp_path / "w" / "run.json").read_text())["wandb_id"]
    assert len(segments) == 2 and {s.run_id for s in segments} == {wandb_id}  # one run, two offline segments
    a, b = segments
    assert a.steps == sorted(a.steps) and b.steps == sorted(b.steps) and max(a.steps) < min(b.steps)
    keys = a.history_keys | b.history_keys
    for stage in ("autoencoder", "operator"):
        assert {f"train/{stage}/train_loss", f"train/{stage}/epoch"} <= keys
    assert "eval/val/fields/_type" in b.history_keys and "eval/nRMSE" in b.summary  # plots and the eval summary
    assert "Traceback" not in out and not ANSI.search(out)


def test_wandb_sync_takes_every_segment_of_the_run(tmp_path, smoke_data, monkeypatch):
    """The README's sync command, as far as it runs without a server: it lists both segments
    (W&B syncs files of one run id in start-time order into that run; the upload is not run here)."""
    import subprocess

    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [f"data.path={smoke_data}", "logging.wandb.enabled=true", "stages.operator.epochs=1"]
    loaded = load_config(ROOT / "tests" / "configs" / "tiny.yaml", overrides)
    for _ in range(2):  # a finished run, then the same command again: a second segment
        pipeline.run(loaded, pipeline.PipelineOptions(name="s", storage=str(tmp_path), quiet=True,
                                                      backend=LocalBackend(device="cpu")))  # fmt: skip
    folders = sorted(str(p) for p in (tmp_path / "s" / "wandb").glob("offline-run-*"))
    wandb_cli = Path(sys.executable).with_name("wandb")
    r = subprocess.run([str(wandb_cli), "sync", "--dry-run", *folders], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and all(Path(f).name in r.stdout + r.stderr for f in folders), r.stdout + r.stderr


def test_a_silent_worker_group_gets_a_line_every_interval():
    import time

    out = io.StringIO()
    c = Console(stream=out, interval_s=0.2)
    with c.watch("operator working"):
        deadline = time.monotonic() + 30
        while "operator working" not in out.getvalue():
            assert time.monotonic() < deadline, "silence was never broken"
            time.sleep(0.05)
    n = len(out.getvalue().splitlines())
    time.sleep(1.5)
    assert len(out.getvalue().splitlines()) == n  # the watch ended with its work
