"""The smoke pipeline end to end on a real local Ray with 2 workers, then the same command again."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ups import pipeline
from ups.config import load_config
from ups.stages import registry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import wandb_offline  # noqa: E402

METRIC_KEYS = {"stage", "epoch", "world_size", "train_loss", "lr", "epoch_time_s", "samples_per_s"}


@pytest.fixture(scope="module")
def smoke_run(ray_session, smoke_data, tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    loaded = load_config(ROOT / "configs" / "smoke.yaml", [f"data.path={smoke_data}"])
    summary = pipeline.run(loaded, pipeline.PipelineOptions(name="smoke", storage=str(storage), quiet=True))
    return loaded, storage, summary.to_dict()  # summary.json's contents, as they are written


@pytest.mark.ray
def test_smoke_trains_every_stage_and_beats_persistence(smoke_run):
    loaded, storage, summary = smoke_run
    run = storage / "smoke"
    stages = summary["stages"]
    assert stages["steady_prior"]["status"] == "skipped"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for name in registry.names()[:4]:
        rec = stages[name]
        assert rec["status"] == "completed" and rec["world_size"] == 2
        assert rec["epochs"] == getattr(loaded.cfg.stages, name).epochs
        assert len(rec["weights_sha256"]) == 64 and Path(rec["export"]).exists()
        # The latent stages share one worker group, whose checkpoints live in ray/operator/.
        assert Path(rec["checkpoint"]).is_dir() and Path(rec["checkpoint"]).parent.parent == run / "ray"
        mine = [r for r in rows if r["stage"] == name]
        assert [r["epoch"] for r in mine] == list(range(1, rec["epochs"] + 1))
        assert all(r.keys() >= METRIC_KEYS and r["world_size"] == 2 for r in mine)
        metric = registry.get(name).val_metric
        assert rec["best"]["metric"] == metric
        assert rec["best"]["value"] < mine[0][metric], f"{name}: validation did not improve on epoch 1"
    ev = summary["eval"]
    assert ev["split"] == "val" and ev["nRMSE"] < ev["persistence_nRMSE"]
    sel = ev["corrector_selection"]  # auto: the trained corrector stays only if it beats the operator on val
    assert set(sel) == {"consistency", "diffusion", "none"} and ev["corrector"] == min(sel, key=sel.get)
    assert ev["nRMSE"] == pytest.approx(sel[ev["corrector"]], rel=1e-6)
    assert summary["eval_test"]["corrector"] == ev["corrector"]  # test follows the val choice
    for key in ("RMSE", "nRMSE", "cRMSE", "bRMSE", "max_err", "fRMSE_low", "fRMSE_mid", "fRMSE_high"):
        assert key in ev and f"persistence_{key}" in ev
    assert len(ev["horizon_nRMSE"]["model"]) == ev["horizon"]
    assert summary["eval_test"]["split"] == "test"
    for split in ("val", "test"):
        assert (
            json.loads((run / "eval" / split / "metrics.json").read_text())["nRMSE"]
            == summary["eval" if split == "val" else "eval_test"]["nRMSE"]
        )
        for png in ("fields.png", "horizon.png"):
            assert (run / "eval" / split / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "config.yaml").exists() and json.loads((run / "run.json").read_text())["config_digest"]


@pytest.mark.ray
def test_one_wandb_run_per_pipeline_run_and_rerun_skips_finished_stages(smoke_run, capsys):
    loaded, storage, first = smoke_run
    run = storage / "smoke"
    wandb_id = json.loads((run / "run.json").read_text())["wandb_id"]
    (only,) = wandb_offline.runs(run)  # one wandb.init for the whole pipeline, in the driver
    assert only.run_id == wandb_id
    for name in registry.names()[:4]:  # every stage's rows, sent by the workers to the driver
        assert {f"train/{name}/train_loss", f"train/{name}/{registry.get(name).val_metric}"} <= only.history_keys
    assert only.summary["eval/nRMSE"] == pytest.approx(first["eval"]["nRMSE"])
    assert only.summary["test/nRMSE"] == pytest.approx(first["eval_test"]["nRMSE"])
    again = pipeline.run(loaded, pipeline.PipelineOptions(name="smoke", storage=str(storage))).to_dict()
    out = capsys.readouterr().out
    for name in registry.names()[:4]:
        assert f"== {name}: completed earlier" in out
        assert again["stages"][name]["weights_sha256"] == first["stages"][name]["weights_sha256"]
    segments = wandb_offline.runs(run)  # the re-run's evaluation: the same run id, steps after the first's
    assert len(segments) == 2 and {s.run_id for s in segments} == {wandb_id}
    assert max(segments[0].steps) < min(segments[1].steps)
    assert again["eval"]["nRMSE"] == first["eval"]["nRMSE"]  # deterministic evaluation
    assert "Traceback" not in out and "pid=" not in out and "\x1b[" not in out
