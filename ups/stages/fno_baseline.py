"""The FNO baseline: trained by the same pipeline, scored by the same evaluation, on the same
data, split and metric, so every run can show the latent surrogate beside it.

PDEBench's protocol: the first `initial_step` frames are given, the FNO predicts the next frame
from the last `initial_step` ones and rolls out autoregressively; the training loss is the MSE
of an unrolled rollout (backpropagated through it) over `rollout_horizon` steps, or to the end of
the trajectory when unset. Validation is the decoded-rollout nRMSE of the whole val split, the
number evaluation reports as `fno_nRMSE`. Off (0 epochs) unless a recipe trains it.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ups.eval.rollout import frame_nrmse, norm_stats, to_physical
from ups.models import factory
from ups.models.fno import FNO
from ups.schema import NonNegInt, PosInt, StageConfig
from ups.stages.base import Stage, Sums, pair_index, task_sums
from ups.stages.registry import register
from ups.train.shard import Trajectories


class FNOStageConfig(StageConfig):
    epochs: NonNegInt = 0  # off unless a recipe trains the baseline
    rollout_horizon: PosInt | None = None  # unrolled steps per training window; None = to the end


class FNOObjective(nn.Module):
    def __init__(self, fno: FNO, initial_step: int):
        super().__init__()
        self.fno, self.initial_step = fno, initial_step

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        window = batch["u"]  # (B, initial_step + H, X.., C), normalised
        given, target = window[:, : self.initial_step], window[:, self.initial_step :]
        pred = self.fno.rollout(given, target.shape[1])
        loss = F.mse_loss(pred, target)
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

    @classmethod
    def samples_per_trajectory(cls, frames: int, stage_cfg: FNOStageConfig, initial_step: int = 1) -> int:
        return max(frames - initial_step - horizon(frames, initial_step, stage_cfg) + 1, 0)

    def build(self) -> FNOObjective:
        # Any `model.baseline.arch` must offer FNO's interface: forward(frames) and rollout(given, steps).
        fno = cast(FNO, factory.build("baseline", self.cfg.model, self.meta, self.cfg.latent))
        return FNOObjective(fno, self.meta.initial_step)

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
