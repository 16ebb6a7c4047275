"""Optimizers, the learning-rate schedule and EMA: everything the loop steps after a backward pass."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, overload

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ups.schema import OptimizerConfig, SchedulerConfig


class MuonAdamW(torch.optim.Optimizer):
    """Muon for >=2-D weight matrices, AdamW for everything else (biases, norms, embeddings' rows).

    One optimizer object so the loop, the checkpoint and the scheduler see a single thing.
    `adjust_lr_fn="match_rms_adamw"` scales Muon's update to AdamW's RMS, so one `lr` serves both.
    """

    def __init__(self, params: list[nn.Parameter], cfg: OptimizerConfig) -> None:
        matrices = [p for p in params if p.ndim >= 2]
        others = [p for p in params if p.ndim < 2]
        self.parts: list[torch.optim.Optimizer] = []
        if matrices:
            self.parts.append(
                torch.optim.Muon(
                    matrices,
                    lr=cfg.lr,
                    weight_decay=cfg.weight_decay,
                    momentum=cfg.muon_momentum,
                    ns_steps=cfg.muon_ns_steps,
                    adjust_lr_fn="match_rms_adamw",
                )
            )
        if others:
            self.parts.append(
                torch.optim.AdamW(others, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)
            )
        super().__init__([{"params": []}], {})  # base bookkeeping only; the parts hold the groups

    # The parts own their groups (load_state_dict replaces the dicts), so always look them up.
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for part in self.parts for g in part.param_groups]

    @param_groups.setter
    def param_groups(self, _groups: list[dict[str, Any]]) -> None:
        pass

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step of every part; a closure (re-evaluating the loss) runs once, with grad on."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts:
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part, s in zip(self.parts, state["parts"], strict=True):
            part.load_state_dict(s)


def build_optimizer(module: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    # One fused kernel instead of a dozen foreach launches per step: small latent models on a GPU
    # are launch-bound (bench/RESULTS.md, GPU step).
    fused = bool(params) and all(p.is_cuda for p in params)
    if cfg.name == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps, fused=fused or None
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps, fused=fused or None
        )
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    return MuonAdamW(params, cfg)


class LRSchedule:
    """Linear warmup, then constant / step / cosine in optimizer steps, or a validation plateau.

    Written by hand because torch's schedulers do not compose a per-step warmup with
    ReduceLROnPlateau. The learning rate is a pure function of (global step, plateau scale), so
    it follows global steps across resumes and world-size changes.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int, steps_per_epoch: int
    ) -> None:
        self.opt, self.cfg = optimizer, cfg
        self.base = [g["lr"] for g in optimizer.param_groups]
        self.spe = max(steps_per_epoch, 1)
        self.warmup = round(cfg.warmup_epochs * self.spe)
        self.t_max = (cfg.t_max or epochs) * self.spe
        self.step_count, self.plateau_scale, self.best, self.bad_epochs = 0, 1.0, math.inf, 0
        self._apply()

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        t = step - self.warmup
        if self.cfg.name == "step":
            return self.cfg.gamma ** (t // (self.cfg.step_size * self.spe))
        if self.cfg.name == "cosine":
            return math.cos(math.pi * min(t / max(self.t_max - self.warmup, 1), 1.0)) * 0.5 + 0.5
        return self.plateau_scale

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for g, base in zip(self.opt.param_groups, self.base):
            g["lr"] = self.cfg.eta_min + (base - self.cfg.eta_min) * f if self.cfg.name == "cosine" else base * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def epoch_end(self, val_metric: float) -> None:
        if self.cfg.name != "plateau" or self.step_count < self.warmup:
            return
        if val_metric < self.best:
            self.best, self.bad_epochs = val_metric, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.cfg.patience:
                self.plateau_scale *= self.cfg.factor
                self.bad_epochs = 0
        self._apply()

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "plateau_scale": self.plateau_scale,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.step_count, self.plateau_scale = s["step"], s["plateau_scale"]
        self.best, self.bad_epochs = s["best"], s["bad_epochs"]
        self._apply()


def ema_model(module: nn.Module, decay: float) -> AveragedModel:
    """EMA of parameters and buffers, with the usual warmup min(decay, (1+n)/(10+n)).

    Without warmup a 0.999 EMA of a short run is mostly its random initialisation.
    """

    @torch.no_grad()
    def update(
        ema_params: Sequence[torch.Tensor], params: Sequence[torch.Tensor], num_averaged: torch.Tensor | int
    ) -> None:
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(list(ema_params), list(params), 1 - d)

    return AveragedModel(module, multi_avg_fn=update, use_buffers=True)
