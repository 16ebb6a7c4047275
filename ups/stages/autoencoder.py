"""Stage 1: GridEncoder + AnyPointDecoder trained on reconstruction of physical frames.

The original UPS never trained its encoder, so its latent space was a random projection; here
the codec is trained first and its weights' digest versions the latent cache.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ups.eval.rollout import FRAMES, chunked, frame_nrmse, norm_stats, to_physical
from ups.models import factory
from ups.schema import NonNegInt, PosInt, StageConfig
from ups.stages.base import Stage, Sums, task_sums
from ups.stages.registry import register
from ups.train.shard import Trajectories


class AutoencoderStageConfig(StageConfig):
    epochs: NonNegInt = 20
    query_points: PosInt | None = None  # decoder points per frame in training; None = the whole grid


class Autoencoder(nn.Module):
    """The codec under training; encoder and decoder are whatever `model.*.arch` registered."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred = self.decoder(self.encoder(batch["u"]), batch["points"])
        return F.mse_loss(pred, batch["target"]), {}


@register
class AutoencoderStage(Stage[Autoencoder, AutoencoderStageConfig]):
    name = "autoencoder"
    config_cls = AutoencoderStageConfig
    export_keys = ("encoder", "decoder")
    provides = {"encoder": "encoder", "decoder": "decoder"}
    builds = ("encoder", "decoder")
    inputs = "fields"
    val_metric = "val_recon_nrmse"

    @classmethod
    def samples_per_trajectory(cls, frames: int, stage_cfg: AutoencoderStageConfig, initial_step: int = 1) -> int:
        return frames  # every frame of every trajectory, once per epoch

    def build(self) -> Autoencoder:
        grid = torch.as_tensor(self.meta.grid)
        encoder = factory.build("encoder", self.cfg.model, self.meta, self.cfg.latent)
        decoder = factory.build("decoder", self.cfg.model, self.meta, self.cfg.latent)
        self.points = grid.reshape(1, -1, grid.shape[-1]).to(self.device)
        return Autoencoder(encoder, decoder)

    def batch(self, train: Trajectories, ids: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        traj, t = ids // self.meta.frames, ids % self.meta.frames
        u = train.fields[traj, t].to(self.device)
        target, points = u.reshape(len(u), -1, u.shape[-1]), self.points
        q = self.stage_cfg.query_points
        if q is not None and q < points.shape[1]:
            pick = torch.randperm(points.shape[1], generator=gen)[:q].to(self.device)
            target, points = target[:, pick], points[:, pick]
        return {"u": u, "target": target, "points": points}

    @torch.no_grad()
    def validate(self, module: Autoencoder, val: Trajectories, rows: torch.Tensor) -> Sums:
        stats = norm_stats(self.meta, self.device)
        errs = []
        # About `FRAMES` frames of trajectories at a time, so that what validation holds (fields,
        # reconstructions, their physical copies) is bounded by that, not by the val set (a
        # streamed val set is read here, not held).
        group = max(1, FRAMES // self.meta.frames)
        for part in rows.split(group) if len(rows) else [rows]:
            u = val.fields[part].to(self.device)  # (n, T, X.., C)
            recon = chunked(lambda x: module.decoder(module.encoder(x), self.points), u.flatten(0, 1))
            task = val.task[part].to(self.device)
            errs.append(frame_nrmse(to_physical(recon.reshape(u.shape), task, *stats), to_physical(u, task, *stats)))
        return task_sums(self.val_metric, torch.cat(errs), val.task[rows].to(self.device), self.meta.tasks)

    def export(self, module: Autoencoder) -> dict[str, Any]:
        return {"encoder": module.encoder.state_dict(), "decoder": module.decoder.state_dict()}
