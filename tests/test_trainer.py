"""The stage trainer without Ray: a toy stage registered here trains through the real trainer,
its config section comes from the registry, auxiliary losses are logged, a stop mid-epoch
checkpoints at the micro-batch and the resumed stage ends bit-identical to an uninterrupted one,
even across an upgrade that added a defaulted key, and seeds follow stage names. Fast tier: no
Ray, seconds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ups import config as C
from ups.contracts import (
    BestMetric,
    ChampionRecord,
    EvalMetrics,
    LatentBuild,
    RunSummary,
    StageRecord,
    StageResult,
    TrainJob,
)
from ups.data.views import DataMeta, Normalizer
from ups.eval.selection import choose_corrector
from ups.exports import ExportMismatch, read_export, write_export
from ups.rundir import RunDir
from ups.schema import NonNegInt, PosFloat, StageConfig
from ups.stages import registry
from ups.stages.base import Stage, Sums, task_sums
from ups.storage import Storage
from ups.train.context import LocalContext
from ups.train.shard import Trajectories
from ups.train.trainer import StageTrainer, read_result, stage_seed

TOKENS, DIM, FRAMES = 2, 4, 6


def said_into(lines: list[str]):
    """An event sink that keeps the Say lines as the console prints them."""
    from ups.events import Say

    return lambda e: lines.append(f"[{e.stage}] {e.text}") if isinstance(e, Say) else None


class ToyConfig(StageConfig):
    epochs: NonNegInt = 3
    scale: PosFloat = 2.0


class ToyObjective(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(DIM, DIM)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred = self.net(batch["z"])
        mse = F.mse_loss(pred, batch["target"])
        return mse, {"l1": (pred - batch["target"]).abs().mean().detach()}


class ToyStage(Stage):
    """Learn z -> scale * z with random input noise, so the data order and the noise both matter."""

    name = "toy"
    config_cls = ToyConfig
    val_metric = "val_toy_mse"
    export_keys = ("net",)

    @classmethod
    def samples_per_trajectory(cls, frames: int, stage_cfg: StageConfig, initial_step: int = 1) -> int:
        return frames

    def build(self) -> nn.Module:
        return ToyObjective()

    def target(self, z: torch.Tensor) -> torch.Tensor:
        return self.stage_cfg.scale * z

    def batch(self, train: Trajectories, ids: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        assert train.z is not None
        z = train.z[ids // FRAMES, ids % FRAMES]
        noisy = z + 0.01 * torch.randn(z.shape, generator=gen)
        return {"z": noisy, "target": self.target(z)}

    @torch.no_grad()
    def validate(self, module: nn.Module, val: Trajectories, rows: torch.Tensor) -> Sums:
        assert val.z is not None
        z = val.z[rows]
        err = (module.net(z) - self.target(z)).pow(2).flatten(1).mean(1)
        return task_sums(self.val_metric, err, val.task[rows], self.meta.tasks)

    def export(self, module: nn.Module) -> dict:
        return {"net": module.net.state_dict()}


@pytest.fixture(scope="module")
def toy() -> Iterator[type[Stage]]:
    registry.register(ToyStage)
    yield ToyStage
    registry.unregister("toy")


def meta() -> DataMeta:
    norm = Normalizer(np.zeros(1, np.float32), np.ones(1, np.float32))
    grid = np.linspace(0, 1, 8, endpoint=False, dtype=np.float32)[:, None]
    return DataMeta(tasks=["toy"], dts=[0.1], grid=grid, lengths=[1.0], normalizers=[norm], frames=FRAMES,
                    initial_step=1)  # fmt: skip


def data(n: int, seed: int) -> Trajectories:
    g = torch.Generator().manual_seed(seed)
    return Trajectories(
        torch.arange(n), torch.zeros(n, dtype=torch.long), z=torch.randn(n, FRAMES, TOKENS, DIM, generator=g)
    )


def tree(**stage: object) -> dict:
    """What the user's config file says (everything else takes the schema's defaults)."""
    return {"training": {"batch_size": 8, "ema_decay": 0.9}, "checkpoint": {"keep": 2},
            "stages": {"toy": {"epochs": 3, "optimizer": {"lr": 3e-2}, **stage}}}  # fmt: skip


def job(tmp: Path, **stage: object) -> TrainJob:
    cfg = C.validate(tree(**stage))
    return job_of(cfg, C.digest(cfg), tmp)


def job_of(cfg: C.Config, digest: str, tmp: Path) -> TrainJob:
    """The stage's job as the pipeline makes it: the run's config digest (run.json) goes with it."""
    return TrainJob(stage="toy", cfg=C.to_dict(cfg), config_digest=digest, meta=meta().to_dict(),
                    run_uri=str(tmp), export_uri=str(tmp / "stages" / "toy" / "export.pt"),
                    checkpoint_uri=str(tmp / "ray" / "toy"))  # fmt: skip


class StopAfter(LocalContext):
    """A context whose external stop request arrives after `calls` polls (every 8 optimizer steps)."""

    def __init__(self, calls: int, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls = calls

    def stop_requested(self) -> bool:
        self.calls -= 1
        return self.calls < 0


class NodeGone(Exception):
    """What a worker sees when its node is taken away: the process ends where it stands."""


class PreemptedAfter(LocalContext):
    """A context whose node gets a preemption notice at its `calls`-th poll and then goes; steps
    taken after the notice are counted (they would be thrown away)."""

    def __init__(self, calls: int, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls, self.polls = calls, 0

    def preemption_notice(self) -> float | None:
        self.polls += 1
        return 0.0 if self.polls > self.calls else None

    def wait_out_preemption(self, deadline: float) -> None:
        raise NodeGone


def train_data() -> dict[str, Trajectories]:
    return {"train": data(24, 0), "val": data(6, 1)}


def test_the_registry_gives_a_toy_stage_its_config_section(toy):
    cfg = C.validate({"stages": {"toy": {"scale": 3.0}}})
    assert C.stage_config(cfg, "toy").scale == 3.0
    assert registry.names()[-1] == "toy"
    with pytest.raises(C.ConfigError, match="unknown key 'stages.toy.scal'"):
        C.validate({"stages": {"toy": {"scal": 3.0}}})


def test_a_toy_stage_trains_through_the_real_trainer_without_ray(toy, tmp_path):
    j = job(tmp_path)
    result = StageTrainer(j, LocalContext(train_data())).fit()
    assert result.status == "completed" and result.epochs == 3 and result.weights_sha256
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["val_toy_mse"] < rows[0]["val_toy_mse"]
    assert all("train_l1" in r for r in rows)  # auxiliary losses are logged, not thrown away
    tensors = read_export(j.export_uri, result.weights_sha256)
    assert set(tensors) == {"net"}
    assert read_result(j.export_uri) == result
    assert len(list((tmp_path / "ray" / "toy").glob("checkpoint_*"))) == 2  # checkpoint.keep


def test_a_stop_mid_epoch_resumes_bit_identical(toy, tmp_path):
    reference = StageTrainer(job(tmp_path / "a"), LocalContext(train_data())).fit()

    j = job(tmp_path / "b")
    said: list[str] = []
    first = StageTrainer(j, StopAfter(0, train_data()), emit=said_into(said)).fit()  # stop at the first poll: step 8
    assert first.status == "interrupted" and not (tmp_path / "b" / "stages").exists()
    # 24 trajectories x 6 frames / batch 8 = 18 steps an epoch: the first poll (step 8) is inside epoch 1
    assert said[-1] == "[toy] stop requested: checkpointed at epoch 1, micro-batch 8"
    resumed = StageTrainer(j, LocalContext(train_data()), emit=said_into(said)).fit()
    assert any(s.startswith("[toy] resumed at epoch 1, micro-batch 8") for s in said)
    assert resumed.status == "completed" and resumed.restarts == 1
    assert resumed.weights_sha256 == reference.weights_sha256


def test_a_preemption_notice_checkpoints_at_the_current_micro_batch_and_resumes_bit_identical(toy, tmp_path):
    reference = StageTrainer(job(tmp_path / "a"), LocalContext(train_data())).fit()

    j = job(tmp_path / "b", epochs=3)
    said: list[str] = []
    ctx = PreemptedAfter(2, train_data())  # the third poll (step 24: epoch 2, micro-batch 6) sees the notice
    with pytest.raises(NodeGone):
        StageTrainer(j, ctx, emit=said_into(said)).fit()
    assert ctx.polls == 3
    assert said[-1].startswith("[toy] preemption notice: checkpointed at epoch 2, micro-batch 6;")
    resumed = StageTrainer(j, LocalContext(train_data()), emit=said_into(said)).fit()
    assert any(s.startswith("[toy] resumed at epoch 2, micro-batch 6 ") for s in said)  # nothing redone
    assert resumed.status == "completed" and resumed.restarts == 1
    assert resumed.weights_sha256 == reference.weights_sha256


def test_a_resize_redoes_the_interrupted_epoch_without_counting_its_steps_twice(toy, tmp_path):
    j = job(tmp_path, epochs=2)
    StageTrainer(j, StopAfter(0, train_data())).fit()  # stopped inside epoch 1, at step 8, on one worker
    bigger = LocalContext(train_data())
    bigger.world = 2  # the group came back with two workers: the epoch is redone on new shards
    said: list[str] = []
    trainer = StageTrainer(j, bigger, emit=said_into(said))
    assert trainer.fit().status == "completed"
    assert any(s.startswith("[toy] resumed at epoch 1, micro-batch 0 (world size 1 -> 2)") for s in said)
    # Two whole epochs at the new size: the 8 steps of the abandoned partial epoch are not counted,
    # so the LR schedule ends where it should instead of running ahead.
    assert trainer.progress.global_step == trainer.schedule.step_count == 2 * trainer.steps_per_epoch


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(toy, tmp_path):
    j = job(tmp_path, epochs=2)
    StageTrainer(j, StopAfter(0, train_data())).fit()
    newest = sorted((tmp_path / "ray" / "toy").glob("checkpoint_*"))[-1]
    (newest / "state.pt").write_bytes(b"truncated")
    said: list[str] = []
    StageTrainer(j, LocalContext(train_data()), emit=said_into(said)).fit()
    assert any(f"corrupt checkpoint skipped: {newest.name}" in s for s in said)


# --- resuming across a package upgrade ---------------------------------------------------------


class ToyConfigV2(ToyConfig):
    """The toy stage's section as a later version ships it: one key more, whose default keeps the
    old behaviour (and one existing default moved, when `scale` is given)."""

    shift: float = 0.0


class ToyStageV2(ToyStage):
    config_cls = ToyConfigV2

    def target(self, z: torch.Tensor) -> torch.Tensor:
        return super().target(z) + self.stage_cfg.shift


@pytest.fixture
def upgrade(toy) -> Iterator:
    """Swap in the toy stage of a later version (the schema is rebuilt from the registry, as at
    import); the original is back after the test."""

    def to(config_cls: type[ToyConfig] = ToyConfigV2) -> None:
        registry.unregister("toy")
        registry.register(type("ToyStageNext", (ToyStageV2,), {"config_cls": config_cls}))

    yield to
    registry.unregister("toy")
    registry.register(ToyStage)


def test_a_run_resumes_across_an_upgrade_that_adds_a_defaulted_key_and_ends_bit_identical(upgrade, tmp_path, capsys):
    reference = StageTrainer(job(tmp_path / "a"), LocalContext(train_data())).fit()

    rundir = RunDir(Storage(str(tmp_path)), "b")
    info = rundir.open(C.validate(tree()))
    first = StageTrainer(job_of(C.validate(tree()), info["config_digest"], tmp_path / "b"), StopAfter(0, train_data()))
    assert first.fit().status == "interrupted"

    upgrade()  # the package is upgraded; the same command runs again
    cfg = C.validate(tree())
    assert C.stage_config(cfg, "toy").shift == 0.0 and C.digest(cfg) != info["config_digest"]
    rundir.check(cfg)  # not refused: the only difference is a key the run never had, at its default
    assert rundir.open(cfg) == info  # resumed under the run's own digest, which its checkpoints carry
    assert "keys added since it started keep their defaults (stages.toy.shift)" in capsys.readouterr().out
    resumed = StageTrainer(job_of(cfg, info["config_digest"], tmp_path / "b"), LocalContext(train_data())).fit()
    assert resumed.status == "completed" and resumed.restarts == 1
    assert resumed.weights_sha256 == reference.weights_sha256


@pytest.mark.parametrize(
    "change, key",
    [
        ({"optimizer": {"lr": 1e-2}}, "stages.toy.optimizer.lr"),
        ({"epochs": 4}, "stages.toy.epochs"),
        ({"shift": 0.5}, "stages.toy.shift"),  # the new key, set away from its default
        (None, "stages.toy.scale"),  # nothing set, but an existing default moved (2.0 -> 3.0)
    ],
)
def test_a_change_to_what_the_run_computes_is_still_refused_after_an_upgrade(upgrade, tmp_path, change, key):
    rundir = RunDir(Storage(str(tmp_path)), "r")
    rundir.open(C.validate(tree()))
    if change is None:
        upgrade(type("ToyConfigV3", (ToyConfigV2,), {"__annotations__": {"scale": float}, "scale": 3.0}))
        cfg = C.validate(tree())
    else:
        upgrade()
        cfg = C.validate(tree(**change))
    with pytest.raises(C.ConfigError, match=f"config differs from the stored run \\(changed: {key}\\)"):
        rundir.check(cfg)
    assert rundir.open(cfg, accept_change=True)["config_digest"] == C.digest(cfg)  # unless the user accepts it


def test_a_run_saved_when_architectures_shared_their_keys_resumes(toy, tmp_path):
    """Before each architecture owned its config class, a saved config gave every network of a role
    the same keys (the transformer operator a `modes`, the spectral one `heads`), and the run's digest
    covered them. Such a folder resumes under its own digest; a real change to a network is refused."""
    rundir = RunDir(Storage(str(tmp_path)), "old")
    cfg = C.validate(tree())
    rundir.open(cfg)
    saved = C.to_dict(cfg)
    saved["model"]["operator"]["modes"] = 16  # what the old schema wrote for the transformer operator
    saved["model"]["decoder"].update(patch_size=4, steps=4)
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(saved))
    info = json.loads((tmp_path / "old" / "run.json").read_text())
    info["config_digest"] = "0" * 64  # the old schema's digest of that config
    (tmp_path / "old" / "run.json").write_text(json.dumps(info))
    assert rundir.check(cfg) == "same"
    assert rundir.open(cfg)["config_digest"] == "0" * 64
    with pytest.raises(C.ConfigError, match=r"changed: model\.operator\.hidden"):
        rundir.check(C.validate({**tree(), "model": {"operator": {"hidden": 32}}}))


def test_a_stage_seed_follows_its_name_not_its_position():
    assert stage_seed(0, "operator") == stage_seed(0, "operator")
    assert stage_seed(0, "operator") != stage_seed(0, "diffusion_residual")
    assert stage_seed(0, "operator") != stage_seed(1, "operator")


def test_a_tampered_export_is_refused(tmp_path):
    uri = str(tmp_path / "export.pt")
    sha = write_export(uri, "toy", {"w": torch.ones(3)}, BestMetric("m", 0.5, 1), "digest")
    assert torch.equal(read_export(uri, sha)["w"], torch.ones(3))
    write_export(uri, "toy", {"w": torch.zeros(3)}, BestMetric("m", 0.5, 1), "digest")
    with pytest.raises(ExportMismatch, match="does not match the recorded"):
        read_export(uri, sha)


def test_contracts_round_trip():
    r = StageResult("operator", "completed", 4, BestMetric("val", 0.25, 3), world_sizes=[2], weights_sha256="ab")
    assert StageResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    rec = StageRecord.of(r, export="e", checkpoint=None, wall_time_s=1.234)
    assert StageRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    assert StageRecord.skipped().to_dict() == {"status": "skipped", "epochs": 0}
    j = TrainJob("s", {}, "d", {}, "r", "e", "c", handoff={"a": "u"})
    assert TrainJob.from_dict(j.to_dict()) == j
    j = TrainJob("s", {}, "d", {}, "r", "e", "c", equal_time_with=["a"], data_prefix="fields/",
                 latent_build=LatentBuild("run", "enc", "sha"))  # fmt: skip
    assert TrainJob.from_dict(json.loads(json.dumps(j.to_dict()))) == j


def test_summary_and_registry_records_read_older_files_and_write_back_the_same_keys(tmp_path):
    # summary.json as the first versions wrote it: an eval without wall_clock or protocol, a
    # skipped stage with two keys only, a latent cache; and a champion.json.
    ev = {"split": "val", "samples": 4, "horizon": 7, "initial_step": 1, "corrector": "diffusion",
          "nRMSE": 0.2, "operator_nRMSE": 0.3, "persistence_nRMSE": 0.9, "fRMSE_high": float("nan"),
          "horizon_nRMSE": {"model": [0.1, 0.3]}, "wall_time_s": 1.5}  # fmt: skip
    rec = StageRecord.of(StageResult("autoencoder", "completed", 2, BestMetric("val_loss", 0.5, 2),
                                     weights_sha256="ab"), export="e", checkpoint="c", wall_time_s=3.0)  # fmt: skip
    old = {"name": "r", "stages": {"autoencoder": rec.to_dict(), "steady_prior": {"status": "skipped", "epochs": 0}},
           "config_digest": "d", "data_sha256": "s", "latent_cache": {"uri": "u", "reused": False,
           "rows": {"train": 3}, "encoder_sha256": "ab"}, "eval": ev}  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(old))
    summary = RunSummary.read(Storage(str(tmp_path)))
    assert summary.stages["autoencoder"] == rec and not summary.stages["steady_prior"].completed
    assert summary.corrector == "diffusion" and summary.eval is not None and summary.eval.nRMSE == 0.2
    assert summary.eval.score("operator_nRMSE") == 0.3 and summary.eval.score("wall_clock") is None
    assert summary.weights_sha256() == {"autoencoder": "ab"} and summary.eval_test is None
    back = json.loads(json.dumps(summary.to_dict()))
    assert back.keys() == old.keys() and back["eval"].keys() == ev.keys() and back["stages"] == old["stages"]
    assert np.isnan(back["eval"].pop("fRMSE_high"))  # NaN (an empty band) stays NaN
    assert back["eval"] == {k: v for k, v in ev.items() if k != "fRMSE_high"}
    champ = {"at": "t", "sweep": "s1", "trial": "a", "run": "r", "config_digest": "d", "data_sha256": "s",
             "weights_sha256": {"autoencoder": "ab"}, "promoted": True, "reasons": ["full: ok"],
             "metrics": {"nRMSE": 0.2}, "champion_before": None, "checkpoint": "reg/champion-1",
             "exports": {"autoencoder": "reg/champion-1/autoencoder/export.pt"}}  # fmt: skip
    (tmp_path / "champion.json").write_text(json.dumps(champ))
    record = ChampionRecord.read(Storage(str(tmp_path)))
    assert record is not None and record.to_dict() == champ and record.trial == "a"
    (tmp_path / "champion.json").write_text(json.dumps({"trial": "a"}))
    with pytest.raises(C.ConfigError, match="champion.json: corrupt champion record"):
        ChampionRecord.read(Storage(str(tmp_path)))


@pytest.mark.parametrize(
    "val, kept",
    [
        ({"corrector": "consistency", "nRMSE": 0.30, "operator_nRMSE": 0.32}, "consistency"),
        ({"corrector": "consistency", "nRMSE": 0.32, "operator_nRMSE": 0.32}, "consistency"),  # a tie keeps it
        ({"corrector": "diffusion", "nRMSE": 0.35, "operator_nRMSE": 0.32}, "none"),
        ({"corrector": "none", "nRMSE": 0.32}, "none"),
        # a rival scored beside the model wins when it is best, and loses to the operator otherwise
        ({"corrector": "consistency", "nRMSE": 0.31, "operator_nRMSE": 0.32, "diffusion_nRMSE": 0.30}, "diffusion"),
        ({"corrector": "consistency", "nRMSE": 0.33, "operator_nRMSE": 0.32, "diffusion_nRMSE": 0.34}, "none"),
    ],
)
def test_corrector_selection_on_val(val, kept):
    record = EvalMetrics.from_dict({"split": "val", "samples": 4, "horizon": 5, "initial_step": 1, **val})
    choice = choose_corrector(record)
    assert choice.kind == kept
    assert choice.changed == (kept != val["corrector"])
    scored = {val["corrector"]} | {k for k in ("diffusion", "consistency") if f"{k}_nRMSE" in val}
    assert set(choice.scores) == scored | {"none"}  # the model, every rival and the operator alone


def test_the_trainer_and_the_local_pipeline_import_without_ray():
    """`--no-ray` is for machines without Ray: nothing on that path may import it."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['ray'] = None\n"  # any `import ray` now raises ImportError
        "import ups.pipeline, ups.backend.local_backend, ups.train.trainer, ups.latent_cache, ups.eval.evaluate\n"
        "import ray_jobs.train\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_stage_sets_its_own_ema_and_clip_over_the_training_section(toy, tmp_path):
    inherit = StageTrainer(job(tmp_path / "a"), LocalContext(train_data()))
    inherit.fit()
    assert inherit.ema is not None and inherit.grad_clip == 1.0  # training.ema_decay 0.9, training.grad_clip
    own = StageTrainer(job(tmp_path / "b", ema_decay=0.0, grad_clip=0.0), LocalContext(train_data()))
    own.fit()
    assert own.ema is None and not own.grad_clip  # 0 = off for this stage only
    assert own.eval_module is own.module  # without EMA the raw weights are validated and exported


def test_a_time_budget_stops_before_an_epoch_that_would_overrun(toy, tmp_path):
    lines: list[str] = []
    tight = StageTrainer(job(tmp_path / "a", time_budget_s=1e-6), LocalContext(train_data()), said_into(lines))
    result = tight.fit()
    assert result.status == "completed" and result.epochs == 1 and result.stopped_early
    assert tight.progress.out_of_time and result.weights_sha256  # the best epoch so far is exported
    assert any("time budget" in line and "stopped after epoch 1" in line for line in lines)
    roomy = StageTrainer(job(tmp_path / "b", time_budget_s=1e6), LocalContext(train_data())).fit()
    assert roomy.epochs == 3 and not roomy.stopped_early
