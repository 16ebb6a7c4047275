"""Stage 1: GridEncoder + AnyPointDecoder trained on reconstruction of physical frames.

The original UPS never trained its encoder, so its latent space was a random projection; here
the codec is trained first and its weights' digest versions the latent cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ups.config import AutoencoderStageConfig
from ups.eval.rollout import frame_nrmse, norm_stats, to_physical
from ups.models.codec import AnyPointDecoder, GridEncoder
from ups.stages.base import Stage, Sums, chunked, task_sums
from ups.train.shard import Trajectories


class Autoencoder(nn.Module):
    def __init__(self, encoder: GridEncoder, decoder: AnyPointDecoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred = self.decoder(self.encoder(batch["u"]), batch["points"])
        return F.mse_loss(pred, batch["target"]), {}


class AutoencoderStage(Stage):
    name = "autoencoder"
    inputs = "fields"
    val_metric = "val_recon_nrmse"
    stage_cfg: AutoencoderStageConfig

    @classmethod
    def samples_per_trajectory(cls, frames: int, stage_cfg) -> int:
        return frames  # every frame of every trajectory, once per epoch

    def build(self) -> Autoencoder:
        grid = torch.as_tensor(self.meta.grid)
        m = self.cfg.model
        encoder = GridEncoder(grid, self.meta.channels, self.cfg.latent.tokens, self.cfg.latent.dim, m.encoder)
        decoder = AnyPointDecoder(grid.shape[-1], self.meta.channels, self.cfg.latent.dim, m.decoder)
        self.points = grid.reshape(1, -1, grid.shape[-1]).to(self.device)
        return Autoencoder(encoder, decoder)

    def batch(self, train: Trajectories, ids: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        traj, t = ids // self.meta.frames, ids % self.meta.frames
        u = train.u[traj, t].to(self.device)
        target, points = u.reshape(len(u), -1, u.shape[-1]), self.points
        q = self.stage_cfg.query_points
        if q is not None and q < points.shape[1]:
            pick = torch.randperm(points.shape[1], generator=gen)[:q].to(self.device)
            target, points = target[:, pick], points[:, pick]
        return {"u": u, "target": target, "points": points}

    @torch.no_grad()
    def validate(self, module: Autoencoder, val: Trajectories, rows: torch.Tensor) -> Sums:
        u = val.u[rows].to(self.device)  # (n, T, X.., C)
        frames = u.flatten(0, 1)
        recon = chunked(lambda x: module.decoder(module.encoder(x), self.points), frames)
        recon = recon.reshape(u.shape)
        task = val.task[rows].to(self.device)
        stats = norm_stats(self.meta, self.device)
        err = frame_nrmse(to_physical(recon, task, *stats), to_physical(u, task, *stats))  # (n, T)
        return task_sums(self.val_metric, err, task, self.meta.tasks)

    def export(self, module: Autoencoder) -> dict:
        return {"encoder": module.encoder.state_dict(), "decoder": module.decoder.state_dict()}
