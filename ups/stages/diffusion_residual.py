"""Stage 3: a real denoiser of the operator's residual r = z_{t+1} - op(z_t), conditioned on op(z_t).

The operator is frozen; its residuals are computed once per (re)start and standardised by their
RMS over the whole training set (all ranks), so the denoiser works on unit-scale data as EDM
assumes. Which z_t: `states: true` takes the true latents, so the corrector learns the operator's
one-step error, which is small and is not what a rollout needs corrected; `states: rollout` takes
the states of the operator's own rollout (from frame 0 and from the frame evaluation starts at),
so r is the whole drift z_{t+1} - op(ẑ_t) the rollout has accumulated, on the states the corrector
meets at inference. Training samples a noise level from EDM's log-normal, noises the residual and regresses
the clean residual with EDM's loss weighting. At inference a few Heun steps of the
probability-flow ODE draw a residual that corrects the operator's step; with `states: rollout` it
corrects each output state and the rollout goes on from the operator's own state, the states it
was trained on (ups/eval/rollout.py, `Corrector.feedback`). An lr near 2e-3 and several epochs
matter: at 3e-4 one epoch leaves the denoise loss near 1, a denoiser that has learnt nothing.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import model_validator
from torch import nn

from ups.models import factory
from ups.schema import NonNegInt, OptimizerConfig, PosFloat, PosInt, StageConfig
from ups.stages.base import ReduceSum, Stage, Sums, task_sums
from ups.stages.registry import register
from ups.train.shard import Trajectories

VAL_PAIRS = 4096  # validation pairs kept (a fixed, evenly strided subset of the val split)


class DiffusionStageConfig(StageConfig):
    epochs: NonNegInt = 10
    optimizer: OptimizerConfig = OptimizerConfig(lr=3e-4)
    sigma_min: PosFloat = 0.002  # in units of the residual's std
    sigma_max: PosFloat = 20.0
    p_mean: float = -1.2  # log-normal noise-level distribution for training (EDM)
    p_std: PosFloat = 1.2
    sample_steps: PosInt = 4  # Heun steps of the few-step sampler
    states: Literal["true", "rollout"] = "true"  # which z_t the residuals are taken at (module docstring)

    @model_validator(mode="after")
    def _range(self) -> DiffusionStageConfig:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min={self.sigma_min} must be < sigma_max={self.sigma_max}")
        return self


class DenoiserObjective(nn.Module):
    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sigma = batch["sigma"]
        pred = self.denoiser(batch["x"], sigma, batch["cond"])
        weight = ((sigma**2 + 1) / sigma**2)[:, None, None]  # EDM λ(σ) for unit-std data
        return (weight * (pred - batch["target"]) ** 2).mean(), {}


def rollout_starts(initial_step: int) -> tuple[int, ...]:
    """Frames the `states: rollout` residuals start from: 0 and the one evaluation starts from."""
    return tuple(sorted({0, initial_step - 1}))


def pairs_per_trajectory(frames: int, states: str, initial_step: int) -> int:
    if states == "true":
        return frames - 1
    return sum(frames - 1 - s for s in rollout_starts(initial_step))


def _pairs(
    operator: nn.Module, z: torch.Tensor, dt: torch.Tensor, task: torch.Tensor, states: str, initial_step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, z_next), each (B, pairs_per_trajectory, tokens, dim), for trajectories z (B, T, tokens, dim)."""
    b, frames = z.shape[:2]
    if states == "true":  # one step from every true frame, in one batched call
        m = frames - 1
        cond = operator(z[:, :-1].flatten(0, 1), dt.repeat_interleave(m), task.repeat_interleave(m))
        return cond.unflatten(0, (b, m)), z[:, 1:]
    cond, nxt = [], []
    for s in rollout_starts(initial_step):
        x = z[:, s]
        for t in range(s, frames - 1):
            x = operator(x, dt, task)  # op(ẑ_t): the operator's own state, uncorrected
            cond.append(x)
            nxt.append(z[:, t + 1])
    return torch.stack(cond, 1), torch.stack(nxt, 1)


class Residuals:
    """cond = op(z_t) and the standardised residual z_{t+1} - cond for every pair of a split, grouped
    by trajectory (`pairs_per_trajectory` rows each, trajectory-major)."""

    def __init__(
        self,
        operator: nn.Module,
        trajs: Trajectories,
        dts: torch.Tensor,
        device: torch.device,
        states: str = "true",
        initial_step: int = 1,
    ) -> None:
        z = trajs.latents
        n, frames = z.shape[:2]
        self.per_traj = pairs_per_trajectory(frames, states, initial_step)
        self.task = trajs.task.repeat_interleave(self.per_traj)
        conds, nexts = [], []
        with torch.no_grad():
            for i in range(0, n, 64):
                zi, task = z[i : i + 64].to(device), trajs.task[i : i + 64].to(device)
                cond, nxt = _pairs(operator, zi, dts[task], task, states, initial_step)
                conds.append(cond.cpu())
                nexts.append(nxt.cpu())
        shape = (0, *z.shape[2:])
        self.cond = torch.cat(conds).flatten(0, 1) if conds else torch.zeros(shape)
        self.res = (torch.cat(nexts).flatten(0, 1) if nexts else torch.zeros(shape)) - self.cond  # latent units

    def standardise(self, scale: float) -> None:
        self.res = self.res / scale

    def __len__(self) -> int:
        return len(self.res)


def frozen_operator(stage: Stage[Any, Any]) -> nn.Module:
    op = factory.build("operator", stage.cfg.model, stage.meta, stage.cfg.latent)
    op.load_state_dict(stage.handoff["operator"]["operator"])
    return op.to(stage.device).eval().requires_grad_(False)


def residuals(stage: Stage[Any, Any], operator: nn.Module, trajs: Trajectories) -> Residuals:
    """The residuals a corrector stage trains on, at the states `stages.diffusion_residual.states` names
    (the consistency student distils the denoiser on the same pairs)."""
    states = stage.cfg.stages.diffusion_residual.states
    return Residuals(operator, trajs, stage.dts, stage.device, states, stage.meta.initial_step)


def val_pairs(n_pairs: int) -> torch.Tensor:
    return torch.arange(0, n_pairs, max(1, math.ceil(n_pairs / VAL_PAIRS)))


@register
class DiffusionResidualStage(Stage[DenoiserObjective, DiffusionStageConfig]):
    name = "diffusion_residual"
    config_cls = DiffusionStageConfig
    export_keys = ("denoiser", "residual_scale")
    provides = {"corrector": "denoiser"}
    builds = ("operator", "denoiser")
    corrector = "diffusion"
    needs = ("operator",)
    val_metric = "val_denoise_loss"

    @classmethod
    def samples_per_trajectory(cls, frames: int, stage_cfg: DiffusionStageConfig, initial_step: int = 1) -> int:
        return pairs_per_trajectory(frames, stage_cfg.states, initial_step)

    def build(self) -> DenoiserObjective:
        self.operator = frozen_operator(self)
        return DenoiserObjective(factory.build("denoiser", self.cfg.model, self.meta, self.cfg.latent))

    def setup(self, train: Trajectories, val: Trajectories, reduce_sum: ReduceSum) -> None:
        self.train_res = residuals(self, self.operator, train)
        sums = reduce_sum(
            torch.tensor(
                [self.train_res.res.double().pow(2).sum().item(), self.train_res.res.numel()], dtype=torch.float64
            )
        )
        self.scale = float((sums[0] / sums[1]).sqrt().clamp_min(1e-12))
        self.train_res.standardise(self.scale)
        self.val_res = residuals(self, self.operator, val)
        self.val_res.standardise(self.scale)
        # Fixed validation noise: one deterministic noise level and draw per kept pair.
        keep = val_pairs(len(self.val_res))
        gen = torch.Generator().manual_seed(self.cfg.training.seed)
        levels = torch.exp(self.stage_cfg.p_mean + self.stage_cfg.p_std * torch.linspace(-1.5, 1.5, 8))
        self.val_keep = keep
        self.val_sigma = levels[torch.arange(len(keep)) % len(levels)]
        self.val_noise = torch.randn((len(keep),) + tuple(self.val_res.res.shape[1:]), generator=gen)

    def batch(self, train: Trajectories, ids: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        r = self.train_res.res[ids]
        sigma = torch.exp(self.stage_cfg.p_mean + self.stage_cfg.p_std * torch.randn(len(ids), generator=gen))
        noise = torch.randn(r.shape, generator=gen)
        to = lambda t: t.to(self.device)
        return {
            "x": to(r + sigma[:, None, None] * noise),
            "sigma": to(sigma),
            "cond": to(self.train_res.cond[ids]),
            "target": to(r),
        }

    @torch.no_grad()
    def validate(self, module: DenoiserObjective, val: Trajectories, rows: torch.Tensor) -> Sums:
        mine = torch.isin(self.val_keep // self.val_res.per_traj, rows)
        pick = self.val_keep[mine]
        batch = {
            "x": self.val_res.res[pick] + self.val_sigma[mine][:, None, None] * self.val_noise[mine],
            "sigma": self.val_sigma[mine],
            "cond": self.val_res.cond[pick],
            "target": self.val_res.res[pick],
        }
        losses = []
        for i in range(0, len(pick), 512):
            part = {k: v[i : i + 512].to(self.device) for k, v in batch.items()}
            pred = module.denoiser(part["x"], part["sigma"], part["cond"])
            w = ((part["sigma"] ** 2 + 1) / part["sigma"] ** 2)[:, None, None]
            losses.append((w * (pred - part["target"]) ** 2).flatten(1).mean(1).cpu())
        loss = torch.cat(losses) if losses else torch.zeros(0)
        return task_sums(self.val_metric, loss, self.val_res.task[pick], self.meta.tasks)

    def export(self, module: DenoiserObjective) -> dict[str, Any]:
        return {"denoiser": module.denoiser.state_dict(), "residual_scale": torch.tensor(self.scale)}
