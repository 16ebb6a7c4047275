"""Stage 2: the latent operator z_{t+1} = z_t + f(z_t, Δt), trained on the latent cache.

Loss: one-step latent MSE, plus (rollout_horizon > 1) the MSE of an unrolled rollout, which
teaches the operator to live with its own errors. Validation is what users care about and what
the original never measured: the autoregressive rollout decoded to physical space, as nRMSE on
the val split, from the last input frame.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ups.eval.rollout import Surrogate, frame_nrmse
from ups.models import factory
from ups.schema import NonNegFloat, NonNegInt, PosInt, StageConfig
from ups.stages.base import Stage, Sums, pair_index, relative_l2, task_sums
from ups.stages.registry import register
from ups.train.shard import Trajectories


class OperatorStageConfig(StageConfig):
    epochs: NonNegInt = 20
    rollout_horizon: PosInt = 1  # unrolled steps in the training loss (1 = one-step only)
    lambda_rollout: NonNegFloat = 0.5  # weight of the unrolled part when rollout_horizon > 1
    # Each step's error: the latent MSE, or its relative L2 per sample (‖z − z*‖ / ‖z*‖, the FNO
    # paper's loss), which weighs every trajectory as the nRMSE it is scored by does.
    loss: Literal["mse", "relative_l2"] = "mse"


def step_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, target) if kind == "mse" else relative_l2(pred, target).mean()


class OperatorObjective(nn.Module):
    def __init__(self, operator: nn.Module, lambda_rollout: float, loss: str = "mse") -> None:
        super().__init__()
        self.operator, self.lambda_rollout, self.loss = operator, lambda_rollout, loss

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        seq, dt, task = batch["z"], batch["dt"], batch["task"]  # seq: (B, H+1, tokens, dim)
        z = self.operator(seq[:, 0], dt, task)
        one_step = step_loss(self.loss, z, seq[:, 1])
        if seq.shape[1] == 2:
            return one_step, {"one_step": one_step.detach()}
        later = []
        for h in range(2, seq.shape[1]):
            z = self.operator(z, dt, task)
            later.append(step_loss(self.loss, z, seq[:, h]))
        rollout = torch.stack(later).mean()
        return one_step + self.lambda_rollout * rollout, {"one_step": one_step.detach(), "rollout": rollout.detach()}


@register
class OperatorStage(Stage[OperatorObjective, OperatorStageConfig]):
    name = "operator"
    config_cls = OperatorStageConfig
    export_keys = ("operator",)
    provides = {"operator": "operator"}
    builds = ("encoder", "decoder", "operator")
    needs = ("autoencoder",)  # the decoder, for decoded validation
    val_metric = "val_rollout_nrmse"

    @classmethod
    def samples_per_trajectory(cls, frames: int, stage_cfg: OperatorStageConfig, initial_step: int = 1) -> int:
        return max(frames - stage_cfg.rollout_horizon, 0)  # windows of H+1 frames

    def build(self) -> OperatorObjective:
        op = factory.build("operator", self.cfg.model, self.meta, self.cfg.latent)
        self.decoder = factory.build("decoder", self.cfg.model, self.meta, self.cfg.latent)
        self.decoder.load_state_dict(self.handoff["autoencoder"]["decoder"])
        self.decoder.to(self.device).eval().requires_grad_(False)
        return OperatorObjective(op, self.stage_cfg.lambda_rollout, self.stage_cfg.loss)

    def batch(self, train: Trajectories, ids: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        h = self.stage_cfg.rollout_horizon
        traj, t = pair_index(ids, self.samples_per_trajectory(self.meta.frames, self.stage_cfg, self.meta.initial_step))
        frames = t[:, None] + torch.arange(h + 1)
        task = train.task[traj].to(self.device)
        return {"z": train.latents[traj[:, None], frames].to(self.device), "dt": self.dt(task), "task": task}

    @torch.no_grad()
    def validate(self, module: OperatorObjective, val: Trajectories, rows: torch.Tensor) -> Sums:
        return rollout_sums(self, Surrogate(self.meta, self.decoder, module.operator, device=self.device), val, rows)

    def export(self, module: OperatorObjective) -> dict[str, Any]:
        return {"operator": module.operator.state_dict()}


def rollout_sums(
    stage: Stage[Any, Any], model: Surrogate, val: Trajectories, rows: torch.Tensor, batch: int = 64
) -> Sums:
    """Decoded rollout nRMSE (frames after the inputs) over `rows` of the val set."""
    t0 = stage.meta.initial_step - 1
    steps = stage.meta.frames - 1 - t0
    if stage.cfg.eval.horizon:
        steps = min(steps, stage.cfg.eval.horizon)
    errs: list[torch.Tensor] = []
    tasks: list[torch.Tensor] = []
    for chunk in rows.split(batch):
        task = val.task[chunk].to(stage.device)
        pred = model.predict_fields(val.latents[chunk, t0].to(stage.device), steps, task)
        true = model.denormalize(val.fields[chunk, t0 + 1 : t0 + 1 + steps].to(stage.device), task)
        errs.append(frame_nrmse(pred, true).mean(1))
        tasks.append(task)
    if not errs:
        return task_sums(stage.val_metric, torch.zeros(0), torch.zeros(0, dtype=torch.long), stage.meta.tasks)
    return task_sums(stage.val_metric, torch.cat(errs), torch.cat(tasks), stage.meta.tasks)
