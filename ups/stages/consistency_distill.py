"""Stage 4: consistency distillation (Song et al. 2023) of the residual denoiser into a one-step
student.

The frozen teacher takes one Heun step of the probability-flow ODE from x_{n+1} (the clean
residual noised to σ_{n+1}) down to σ_n; the student at σ_{n+1} must match a slowly moving EMA
copy of itself at σ_n on the teacher's point. The student is parametrised so that f(x, σ_min) = x,
and is initialised from the teacher. The original "distillation" regressed the residual to zero;
this one makes the rollout cost one extra network call per step instead of 2·steps-1.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from ups.models import factory
from ups.models.latent import heun_sample, karras_sigmas
from ups.schema import Fraction, NonNegInt, OptimizerConfig, StageConfig, at_least
from ups.stages.base import ReduceSum, Stage, Sums, task_sums
from ups.stages.diffusion_residual import frozen_operator, residuals, val_pairs
from ups.stages.registry import register
from ups.train.shard import Trajectories


class ConsistencyStageConfig(StageConfig):
    epochs: NonNegInt = 5
    optimizer: OptimizerConfig = OptimizerConfig(lr=1e-4)
    num_scales: Annotated[int, at_least(2)] = 18  # discretisation of the teacher's probability-flow ODE
    target_ema: Fraction = 0.95  # EMA of the student that provides the consistency target


class StudentObjective(nn.Module):
    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.mse_loss(self.student(batch["x"], batch["sigma"], batch["cond"]), batch["target"]), {}


@register
class ConsistencyDistillStage(Stage[StudentObjective, ConsistencyStageConfig]):
    name = "consistency_distill"
    config_cls = ConsistencyStageConfig
    export_keys = ("student", "residual_scale")
    provides = {"corrector": "student"}
    builds = ("denoiser",)
    corrector = "consistency"
    needs = ("operator", "diffusion_residual")
    val_metric = "val_distill_mse"

    @classmethod
    def samples_per_trajectory(cls, frames: int, stage_cfg: ConsistencyStageConfig, initial_step: int = 1) -> int:
        return frames - 1  # a lower bound: the pairs depend on the teacher's `states` (num_samples is exact)

    def num_samples(self, train: Trajectories) -> int:
        return len(self.train_res)

    def build(self) -> StudentObjective:
        cfg, diff = self.cfg, self.cfg.stages.diffusion_residual
        self.operator = frozen_operator(self)
        self.teacher = factory.build("denoiser", cfg.model, self.meta, cfg.latent)
        self.teacher.load_state_dict(self.handoff["diffusion_residual"]["denoiser"])
        self.teacher.to(self.device).eval().requires_grad_(False)
        self.scale = float(self.handoff["diffusion_residual"]["residual_scale"])
        student = factory.build(
            "denoiser", cfg.model, self.meta, cfg.latent, consistency=True, sigma_min=diff.sigma_min
        )
        student.load_state_dict(self.teacher.state_dict())
        self.target = copy.deepcopy(student).to(self.device).eval().requires_grad_(False)
        # Ascending noise levels σ_0 = σ_min < ... < σ_{N-1} = σ_max.
        self.sigmas = karras_sigmas(self.stage_cfg.num_scales, diff.sigma_min, diff.sigma_max).flip(0)
        return StudentObjective(student)

    def setup(self, train: Trajectories, val: Trajectories, reduce_sum: ReduceSum) -> None:
        diff = self.cfg.stages.diffusion_residual
        self.train_res = residuals(self, self.operator, train)
        self.train_res.standardise(self.scale)
        self.val_res = residuals(self, self.operator, val)
        self.val_res.standardise(self.scale)
        # Validation: the teacher's few-step sample and the student's one step from the same noise.
        self.val_keep = val_pairs(len(self.val_res))
        gen = torch.Generator().manual_seed(self.cfg.training.seed)
        cond = self.val_res.cond[self.val_keep]
        self.val_x = torch.randn(cond.shape, generator=gen) * diff.sigma_max
        teacher_sigmas = karras_sigmas(diff.sample_steps, diff.sigma_min, diff.sigma_max)
        self.val_teacher = (
            torch.cat(
                [
                    heun_sample(
                        self.teacher,
                        cond[i : i + 512].to(self.device),
                        self.val_x[i : i + 512].to(self.device),
                        teacher_sigmas,
                    ).cpu()
                    for i in range(0, len(cond), 512)
                ]
            )
            if len(cond)
            else cond.clone()
        )

    @torch.no_grad()
    def batch(self, train: Trajectories, ids: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        r = self.train_res.res[ids].to(self.device)
        cond = self.train_res.cond[ids].to(self.device)
        n = torch.randint(0, len(self.sigmas) - 1, (len(ids),), generator=gen)
        s_lo = self.sigmas[n].to(self.device)
        s_hi = self.sigmas[n + 1].to(self.device)
        x_hi = r + s_hi[:, None, None] * torch.randn(r.shape, generator=gen).to(self.device)
        # One Heun step of the teacher's ODE from σ_{n+1} to σ_n.
        view = lambda s: s[:, None, None]
        d_hi = (x_hi - self.teacher(x_hi, s_hi, cond)) / view(s_hi)
        x_lo = x_hi + view(s_lo - s_hi) * d_hi
        d_lo = (x_lo - self.teacher(x_lo, s_lo, cond)) / view(s_lo)
        x_lo = x_hi + view(s_lo - s_hi) * (d_hi + d_lo) / 2
        return {"x": x_hi, "sigma": s_hi, "cond": cond, "target": self.target(x_lo, s_lo, cond)}

    @torch.no_grad()
    def after_step(self, module: StudentObjective) -> None:
        mu = self.stage_cfg.target_ema
        for t, s in zip(self.target.parameters(), module.student.parameters()):
            t.lerp_(s, 1 - mu)

    @torch.no_grad()
    def validate(self, module: StudentObjective, val: Trajectories, rows: torch.Tensor) -> Sums:
        mine = torch.isin(self.val_keep // self.val_res.per_traj, rows)
        pick, x, teacher = self.val_keep[mine], self.val_x[mine], self.val_teacher[mine]
        errs = []
        for i in range(0, len(pick), 512):
            cond = self.val_res.cond[pick[i : i + 512]].to(self.device)
            sigma = torch.full((len(cond),), self.sigmas[-1].item(), device=self.device)
            one_step = module.student(x[i : i + 512].to(self.device), sigma, cond)
            errs.append((one_step - teacher[i : i + 512].to(self.device)).pow(2).flatten(1).mean(1).cpu())
        err = torch.cat(errs) if errs else torch.zeros(0)
        return task_sums(self.val_metric, err, self.val_res.task[pick], self.meta.tasks)

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target.load_state_dict(state["target"])

    def export(self, module: StudentObjective) -> dict[str, Any]:
        return {"student": module.student.state_dict(), "residual_scale": torch.tensor(self.scale)}
