"""Stage 5: the steady prior, iterative refinement from any latent state toward the trajectory's
terminal latent. Transient problems have no steady state: 0 epochs marks the stage skipped."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ups.models.latent import SteadyPrior
from ups.stages.base import Stage, Sums, chunked, pair_index, task_sums
from ups.train.shard import Trajectories


class PriorObjective(nn.Module):
    def __init__(self, prior: SteadyPrior):
        super().__init__()
        self.prior = prior

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.mse_loss(self.prior(batch["z"]), batch["target"]), {}


class SteadyPriorStage(Stage):
    name = "steady_prior"
    val_metric = "val_steady_mse"

    @classmethod
    def samples_per_trajectory(cls, frames: int, stage_cfg) -> int:
        return frames - 1  # every state before the terminal one

    def build(self) -> PriorObjective:
        return PriorObjective(SteadyPrior(self.cfg.latent.tokens, self.cfg.latent.dim, self.cfg.model.steady))

    def batch(self, train: Trajectories, ids: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        traj, t = pair_index(ids, self.meta.frames - 1)
        return {"z": train.z[traj, t].to(self.device), "target": train.z[traj, -1].to(self.device)}

    @torch.no_grad()
    def validate(self, module: PriorObjective, val: Trajectories, rows: torch.Tensor) -> Sums:
        z = val.z[rows, :-1].flatten(0, 1).to(self.device)
        target = val.z[rows, -1:].expand(-1, self.meta.frames - 1, -1, -1).flatten(0, 1).to(self.device)
        err = (chunked(module.prior, z) - target).pow(2).flatten(1).mean(1)
        return task_sums(
            self.val_metric, err.cpu(), val.task[rows].repeat_interleave(self.meta.frames - 1), self.meta.tasks
        )

    def export(self, module: PriorObjective) -> dict:
        return {"prior": module.prior.state_dict()}
