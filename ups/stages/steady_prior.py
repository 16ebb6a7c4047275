"""Stage 5: the steady prior, iterative refinement from any latent state toward the trajectory's
terminal latent. Transient problems have no steady state: 0 epochs marks the stage skipped."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ups.eval.rollout import chunked
from ups.models import factory
from ups.schema import NonNegInt, StageConfig
from ups.stages.base import Stage, Sums, pair_index, task_sums
from ups.stages.registry import register
from ups.train.shard import Trajectories


class SteadyStageConfig(StageConfig):
    epochs: NonNegInt = 0  # off: transient problems have no steady state


class PriorObjective(nn.Module):
    def __init__(self, prior: nn.Module) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.mse_loss(self.prior(batch["z"]), batch["target"]), {}


@register
class SteadyPriorStage(Stage[PriorObjective, SteadyStageConfig]):
    name = "steady_prior"
    config_cls = SteadyStageConfig
    export_keys = ("prior",)
    provides = {"prior": "prior"}
    builds = ("steady",)
    val_metric = "val_steady_mse"

    @classmethod
    def samples_per_trajectory(cls, frames: int, stage_cfg: SteadyStageConfig, initial_step: int = 1) -> int:
        return frames - 1  # every state before the terminal one

    def build(self) -> PriorObjective:
        return PriorObjective(factory.build("steady", self.cfg.model, self.meta, self.cfg.latent))

    def batch(self, train: Trajectories, ids: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        traj, t = pair_index(ids, self.meta.frames - 1)
        z = train.latents
        return {"z": z[traj, t].to(self.device), "target": z[traj, -1].to(self.device)}

    @torch.no_grad()
    def validate(self, module: PriorObjective, val: Trajectories, rows: torch.Tensor) -> Sums:
        z = val.latents[rows, :-1].flatten(0, 1).to(self.device)
        target = val.latents[rows, -1:].expand(-1, self.meta.frames - 1, -1, -1).flatten(0, 1).to(self.device)
        err = (chunked(module.prior, z) - target).pow(2).flatten(1).mean(1)
        return task_sums(
            self.val_metric, err.cpu(), val.task[rows].repeat_interleave(self.meta.frames - 1), self.meta.tasks
        )

    def export(self, module: PriorObjective) -> dict[str, Any]:
        return {"prior": module.prior.state_dict()}
