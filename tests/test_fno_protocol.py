"""The FNO baseline trains at its own published protocol unless the config says otherwise."""

from __future__ import annotations

from pathlib import Path

import torch

from ups import config as C
from ups.stages.fno_baseline import FNOStageConfig, summed_relative_l2

ROOT = Path(__file__).resolve().parents[1]


def _fno(**section: object) -> FNOStageConfig:
    cfg = C.validate({"training": {"batch_size": 64, "ema_decay": 0.999, "grad_clip": 1.0},
                      "stages": {"fno_baseline": {"epochs": 5, **section}}})  # fmt: skip
    out = C.stage_config(cfg, "fno_baseline")
    assert isinstance(out, FNOStageConfig)
    return out


def test_auto_is_pdebench_in_1d_and_the_fno_papers_in_2d():
    one, two = _fno().resolved(1), _fno().resolved(2)
    assert (one.protocol, one.batch_size, two.protocol, two.batch_size) == ("pdebench", 50, "fno2d", 20)
    for s in (one, two):
        assert (s.optimizer.name, s.optimizer.lr, s.optimizer.weight_decay) == ("adam", 1e-3, 1e-4)
        assert (s.scheduler.name, s.scheduler.step_size, s.scheduler.gamma) == ("step", 100, 0.5)
        assert s.ema_decay == 0.0 and s.grad_clip == 0.0  # not the recipe's EMA and clip
        assert s.epochs == 5


def test_what_the_config_sets_wins_over_the_protocol():
    s = _fno(batch_size=8, optimizer={"name": "adamw", "lr": 3e-4}, grad_clip=2.0).resolved(2)
    assert (s.batch_size, s.optimizer.name, s.optimizer.lr, s.grad_clip) == (8, "adamw", 3e-4, 2.0)
    assert s.scheduler.name == "step" and s.ema_decay == 0.0  # the keys left unset still follow the paper
    assert _fno(protocol="pdebench").resolved(2).batch_size == 50  # a named protocol ignores the dimension


def test_the_recipe_protocol_leaves_the_run_settings_in_place():
    s = _fno(protocol="recipe").resolved(2)
    assert s.batch_size is None and s.ema_decay is None and s.grad_clip is None  # training.* apply
    assert s.scheduler.name == "constant"


def test_the_summed_relative_l2_is_the_papers_loss():
    target = torch.ones(2, 3, 4, 4, 1)
    pred = target.clone()
    pred[0, 1] *= 1.5  # one frame 50% off in one sample
    assert torch.isclose(summed_relative_l2(pred, target), torch.tensor(0.25))  # (0.5 + 0) / 2 samples
    assert summed_relative_l2(target, target) == 0


def test_the_baseline_trains_alone_for_a_time_budget_and_is_the_runs_model(tmp_path):
    from pathlib import Path

    import numpy as np

    from ray_jobs.train import only_stages
    from ups import pipeline
    from ups.backend.local_backend import LocalBackend

    tiny2d = Path(__file__).resolve().parent / "configs" / "tiny2d.yaml"
    sets = [f"data.path={tmp_path / 'tiny.h5'}", "stages.fno_baseline.epochs=50",
            "stages.fno_baseline.time_budget_s=1e-6", "eval.plots=false", *only_stages("fno_baseline")]  # fmt: skip
    loaded = C.load_config(tiny2d, sets)
    opts = pipeline.PipelineOptions(name="fno", storage=str(tmp_path / "runs"), quiet=True, backend=LocalBackend("cpu"))
    summary = pipeline.run(loaded, opts)
    fno = summary.stages["fno_baseline"]
    assert fno.status == "completed" and fno.epochs == 1  # the budget stopped it after its first epoch
    ran = fno.trained_with  # what the worker trained with, after the trip from the driver
    assert ran is not None and ran["batch_size"] == 20 and ran["optimizer"]["name"] == "adam"
    assert ran["scheduler"]["name"] == "step" and ran["ema_decay"] == 0.0 and ran["grad_clip"] == 0.0
    assert {n for n, r in summary.stages.items() if r.status == "completed"} == {"fno_baseline"}
    for ev in (summary.eval, summary.eval_test):
        assert ev is not None and np.isfinite(ev.nRMSE)
        assert ev.scores["fno_nRMSE"] == ev.nRMSE and np.isfinite(ev.persistence_nRMSE)
        assert ev.corrector == "none"


def test_the_protocol_survives_the_trip_to_the_worker(tmp_path):
    """The worker rebuilds the config from what the driver sends: it must still know which keys the
    user left unset, or the protocol fills nothing and the FNO trains under the recipe's batch and
    optimizer (as it once did: batch 128, AdamW without weight decay)."""
    from pathlib import Path

    tiny2d = Path(__file__).resolve().parent / "configs" / "tiny2d.yaml"
    cfg = C.load_config(tiny2d, [f"data.path={tmp_path / 'tiny.h5'}", "stages.fno_baseline.epochs=3",
                                 "stages.fno_baseline.optimizer.lr=5e-4"]).cfg  # fmt: skip
    worker = C.from_dict(C.to_wire(cfg))
    here, there = C.stage_config(cfg, "fno_baseline", 2), C.stage_config(worker, "fno_baseline", 2)
    assert there == here
    assert (there.batch_size, there.optimizer.name, there.optimizer.weight_decay) == (20, "adam", 1e-4)
    assert there.optimizer.lr == 5e-4  # the one leaf the user set; the protocol's Adam around it
    assert there.scheduler.name == "step" and there.ema_decay == 0.0 and there.grad_clip == 0.0
    assert C.digest(worker) == C.digest(cfg)  # the same run, however it travelled


def test_equal_time_gives_the_baseline_the_surrogates_training_time(tmp_path):
    """`equal_time`: the FNO's budget is what the surrogate's stages spent in their epochs, as
    summary.json records it, and the end-of-run table sets the two scores side by side."""
    from ups import pipeline
    from ups.backend.local_backend import LocalBackend
    from ups.report import summary_table

    tiny2d = Path(__file__).resolve().parent / "configs" / "tiny2d.yaml"
    sets = [f"data.path={tmp_path / 'tiny.h5'}", "stages.autoencoder.epochs=1", "stages.operator.epochs=1",
            "stages.diffusion_residual.epochs=0", "stages.consistency_distill.epochs=0",
            "stages.fno_baseline.epochs=3", "stages.fno_baseline.equal_time=true", "eval.plots=false"]  # fmt: skip
    opts = pipeline.PipelineOptions(name="eq", storage=str(tmp_path / "runs"), quiet=True, backend=LocalBackend("cpu"))
    summary = pipeline.run(C.load_config(tiny2d, sets), opts)
    ae, op, fno = (summary.stages[n] for n in ("autoencoder", "operator", "fno_baseline"))
    assert ae.train_s and op.train_s and fno.train_s and fno.trained_with
    assert fno.trained_with["time_budget_s"] == round(ae.train_s + op.train_s, 2)
    # Every stage trained in one group (in one process, as a Ray group of one does): the worker
    # encoded the latent cache after the autoencoder and added the stages' time to the FNO's
    # budget, which the driver could not know when it started the group.
    run = tmp_path / "runs" / "eq"
    assert fno.checkpoint and Path(fno.checkpoint).parent == run / "ray" / "autoencoder"
    assert sorted(p.name for p in (run / "ray").iterdir()) == ["autoencoder"]
    assert summary.latent_cache is not None and summary.latent_cache.reused is False
    assert 1 <= fno.epochs <= 3  # the cap still holds; the time decides within it
    (line,) = [ln for ln in summary_table(summary).splitlines() if ln.startswith("at equal training time")]
    assert f"autoencoder {ae.train_s:.0f}s + operator {op.train_s:.0f}s" in line and f"{fno.epochs} epochs" in line


def test_equal_time_and_a_time_budget_are_one_choice():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="equal_time=true .* time_budget_s=30"):
        FNOStageConfig(epochs=5, equal_time=True, time_budget_s=30)


def test_a_group_of_one_process_trains_the_whole_pipeline(tmp_path):
    """A backend whose group holds its data (one process, in memory) trains every stage in one
    group: the latent cache is encoded inside it. Otherwise a group per run of same-input stages."""
    from ups import pipeline
    from ups.rundir import RunDir
    from ups.storage import Storage

    cfg = C.load_config(ROOT / "configs" / "quickstart.yaml").cfg  # AE, operator, FNO (equal_time)
    rundir = RunDir(Storage(str(tmp_path)), "g")
    split = pipeline._groups(cfg, rundir, {}, lambda _: None, mixed=False)
    mixed = pipeline._groups(cfg, rundir, {}, lambda _: None, mixed=True)
    assert split == [["autoencoder", "autoencoder"], ["operator", "operator"], ["fno_baseline", "fno_baseline"]]
    assert mixed == [["autoencoder", "autoencoder", "operator", "fno_baseline"]]


def test_a_stage_done_inside_the_group_is_recorded_before_the_group_ends(tmp_path, monkeypatch):
    """One group trains the whole pipeline, so a driver that dies mid-operator must still find the
    autoencoder done: it is recorded in summary.json when it finishes (StageDone), and the same
    command then trains only what is left, on the cache the group built, to the same weights."""
    import json

    import pytest

    from ups import pipeline
    from ups.backend.local_backend import LocalBackend
    from ups.train import trainer

    tiny2d = ROOT / "tests" / "configs" / "tiny2d.yaml"
    sets = [f"data.path={tmp_path / 'tiny.h5'}", "stages.autoencoder.epochs=1", "stages.operator.epochs=1",
            "stages.diffusion_residual.epochs=0", "stages.consistency_distill.epochs=0",
            "stages.fno_baseline.epochs=0", "eval.plots=false"]  # fmt: skip
    run = lambda name: pipeline.run(  # noqa: E731
        C.load_config(tiny2d, sets),
        pipeline.PipelineOptions(name=name, storage=str(tmp_path / "runs"), quiet=True, backend=LocalBackend("cpu")),
    )
    reference = run("whole")

    fit = trainer.StageTrainer.fit

    def dies_in_the_operator(self: trainer.StageTrainer):  # the driver's process dies there
        if self.name == "operator":
            raise KeyboardInterrupt
        return fit(self)

    monkeypatch.setattr(trainer.StageTrainer, "fit", dies_in_the_operator)
    with pytest.raises(KeyboardInterrupt):
        run("cut")
    recorded = json.loads((tmp_path / "runs" / "cut" / "summary.json").read_text())["stages"]
    assert recorded["autoencoder"]["status"] == "completed" and "operator" not in recorded
    monkeypatch.undo()

    again = run("cut")
    rows = [json.loads(line) for line in (tmp_path / "runs" / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows].count("autoencoder") == 1  # not trained again
    assert again.latent_cache is not None and again.latent_cache.reused is True
    for stage in ("autoencoder", "operator"):
        assert again.stages[stage].weights_sha256 == reference.stages[stage].weights_sha256
