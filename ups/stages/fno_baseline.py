"""The FNO baseline: trained by the same pipeline, scored by the same evaluation, on the same
data, split and metric, so every run can show the latent surrogate beside it.

The first `initial_step` frames are given, the FNO predicts the next frame from the last
`initial_step` ones and rolls out autoregressively, trained through an unrolled rollout over
`rollout_horizon` steps (to the end of the trajectory when unset). Validation is the
decoded-rollout nRMSE of the whole val split, the number evaluation reports as `fno_nRMSE`. Off
(0 epochs) unless a recipe trains it.

A baseline is only a fair comparison at its own published protocol, not under the surrogate's
recipe (a cosine schedule to zero, EMA weights, clipping flatter it or handicap it), so `protocol`
fills every training key the config leaves unset:
- `pdebench` (PDEBench, Takamoto et al. 2022): Adam 1e-3, weight decay 1e-4, StepLR 100 × 0.5,
  batch 50, no EMA, no clipping, the MSE of the rollout;
- `fno2d` (Li et al. 2021, the recurrent FNO-2D on Navier–Stokes): the same optimizer and schedule,
  batch 20, the loss summed over the rollout's frames of each frame's relative L2 error;
- `auto` (the default): `pdebench` on 1D data, `fno2d` on 2D;
- `recipe`: nothing filled, the training keys of the run apply as to any stage.
A key the user set wins, down to one leaf: `optimizer.lr: 5e-4` keeps the protocol's Adam and
weight decay at that rate. Which keys were set must survive the trip to the worker, so configs cross
processes as `ups.config.to_wire` (the set keys only), never as a full dump.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
import torch.nn.functional as F
from pydantic import BaseModel, model_validator
from torch import nn

from ups.eval.rollout import frame_nrmse, norm_stats, to_physical
from ups.models import factory
from ups.models.fno import FNO
from ups.schema import NonNegInt, OptimizerConfig, PosInt, SchedulerConfig, StageConfig
from ups.stages.base import Stage, Sums, pair_index, relative_l2, task_sums
from ups.stages.registry import register
from ups.train.shard import Trajectories

Protocol = Literal["auto", "pdebench", "fno2d", "recipe"]
PROTOCOL_BATCH = {"pdebench": 50, "fno2d": 20}


class FNOStageConfig(StageConfig):
    epochs: NonNegInt = 0  # off unless a recipe trains the baseline
    rollout_horizon: PosInt | None = None  # unrolled steps per training window; None = to the end
    protocol: Protocol = "auto"  # whose training settings fill the keys left unset (module docstring)
    # Train for as long as this run's surrogate stages trained (the sum of their epochs' wall,
    # summary.json's `train_s`), so a run compares the two at equal time: `epochs` is then a cap
    # and the time decides. Exclusive with `time_budget_s`.
    equal_time: bool = False

    @model_validator(mode="after")
    def _one_budget(self) -> FNOStageConfig:
        if self.equal_time and self.time_budget_s is not None:
            raise ValueError(
                f"equal_time=true takes the surrogate's training time as the budget; "
                f"time_budget_s={self.time_budget_s:g} sets another: set one of them"
            )
        return self

    def resolved(self, dims: int) -> FNOStageConfig:
        """This config with its protocol's settings in every training key the user left unset."""
        protocol = self.protocol
        if protocol == "recipe":
            return self
        if protocol == "auto":
            protocol = "pdebench" if dims == 1 else "fno2d"
        fill = {
            "optimizer": OptimizerConfig(name="adam", lr=1e-3, weight_decay=1e-4),
            "scheduler": SchedulerConfig(name="step", step_size=100, gamma=0.5),
            "batch_size": PROTOCOL_BATCH[protocol],
            "ema_decay": 0.0,
            "grad_clip": 0.0,
        }
        update: dict[str, object] = {}
        for key, value in fill.items():
            mine = getattr(self, key)
            if key not in self.model_fields_set:
                update[key] = value
            elif isinstance(value, BaseModel):  # e.g. only `optimizer.lr` set: the protocol's optimizer at that lr
                update[key] = value.model_copy(update={k: getattr(mine, k) for k in mine.model_fields_set})
        return self.model_copy(update={**update, "protocol": protocol})


def summed_relative_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The FNO paper's recurrent loss: per sample, the sum over frames of ‖pred − true‖ / ‖true‖."""
    return relative_l2(pred, target, start=2).sum(1).mean()


class FNOObjective(nn.Module):
    def __init__(self, fno: FNO, initial_step: int, loss: str = "mse"):
        super().__init__()
        self.fno, self.initial_step, self.loss = fno, initial_step, loss

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        window = batch["u"]  # (B, initial_step + H, X.., C), normalised
        given, target = window[:, : self.initial_step], window[:, self.initial_step :]
        pred = self.fno.rollout(given, target.shape[1])
        loss = summed_relative_l2(pred, target) if self.loss == "relative_l2" else F.mse_loss(pred, target)
        return loss, {"one_step": F.mse_loss(pred[:, 0], target[:, 0]).detach()}


def horizon(frames: int, initial_step: int, stage_cfg: FNOStageConfig) -> int:
    return min(stage_cfg.rollout_horizon or frames, frames - initial_step)


@register
class FNOBaselineStage(Stage[FNOObjective, FNOStageConfig]):
    name = "fno_baseline"
    config_cls = FNOStageConfig
    inputs = "fields"
    val_metric = "val_fno_rollout_nrmse"
    export_keys = ("fno",)
    provides = {"baseline": "fno"}
    builds = ("baseline",)

    @classmethod
    def samples_per_trajectory(cls, frames: int, stage_cfg: FNOStageConfig, initial_step: int = 1) -> int:
        return max(frames - initial_step - horizon(frames, initial_step, stage_cfg) + 1, 0)

    def build(self) -> FNOObjective:
        # Any `model.baseline.arch` must offer FNO's interface: forward(frames) and rollout(given, steps).
        fno = cast(FNO, factory.build("baseline", self.cfg.model, self.meta, self.cfg.latent))
        loss = "relative_l2" if self.stage_cfg.protocol == "fno2d" else "mse"
        return FNOObjective(fno, self.meta.initial_step, loss)

    def batch(self, train: Trajectories, ids: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        init = self.meta.initial_step
        h = horizon(self.meta.frames, init, self.stage_cfg)
        traj, t0 = pair_index(ids, self.samples_per_trajectory(self.meta.frames, self.stage_cfg, init))
        frames = t0[:, None] + torch.arange(init + h)
        return {"u": train.fields[traj[:, None], frames].to(self.device)}

    @torch.no_grad()
    def validate(self, module: FNOObjective, val: Trajectories, rows: torch.Tensor) -> Sums:
        init = self.meta.initial_step
        steps = self.meta.frames - init
        if self.cfg.eval.horizon:
            steps = min(steps, self.cfg.eval.horizon)
        stats = norm_stats(self.meta, self.device)
        errs, tasks = [], []
        for chunk in rows.split(64):
            u = val.fields[chunk].to(self.device)
            task = val.task[chunk].to(self.device)
            pred = module.fno.rollout(u[:, :init], steps)
            true = u[:, init : init + steps]
            errs.append(frame_nrmse(to_physical(pred, task, *stats), to_physical(true, task, *stats)).mean(1))
            tasks.append(task)
        if not errs:
            return task_sums(self.val_metric, torch.zeros(0), torch.zeros(0, dtype=torch.long), self.meta.tasks)
        return task_sums(self.val_metric, torch.cat(errs), torch.cat(tasks), self.meta.tasks)

    def export(self, module: FNOObjective) -> dict:
        return {"fno": module.fno.state_dict()}
