"""The trained stack as one predictor: encode, step in latent space (operator + optional
corrector), decode. Used by the operator stage's validation and by evaluation, so the numbers
that select checkpoints and the numbers that are reported come from the same code."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ups.data.views import DataMeta
from ups.models.latent import heun_sample, karras_sigmas
from ups.schema import CorrectorKind


@dataclass
class Corrector:
    """A residual sampler: diffusion (few-step Heun) or consistency (one step)."""

    kind: CorrectorKind
    net: nn.Module
    scale: float  # std of the operator's residual, the sampler works in units of it
    sigma_min: float
    sigma_max: float
    steps: int
    noise_scale: float = 0.0
    # Whether the corrected state is fed back into the rollout (a corrector of the one-step error,
    # trained on true states) or only the output is corrected and the rollout goes on from the
    # operator's own state (a corrector trained on that uncorrected rollout: fed back, it would meet
    # states it never saw and correct drift that is already gone).
    feedback: bool = True

    @torch.no_grad()
    def __call__(self, cond: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        noise = torch.randn(cond.shape, generator=gen).to(cond) if self.noise_scale > 0 else torch.zeros_like(cond)
        x = noise * self.noise_scale * self.sigma_max
        if self.kind == "consistency":
            r = self.net(x, torch.full((len(x),), self.sigma_max, device=x.device), cond)
        else:
            r = heun_sample(self.net, cond, x, karras_sigmas(self.steps, self.sigma_min, self.sigma_max))
        return r * self.scale


class LatentStack:
    """The trained networks in a rollout: encode, step in latent space (operator + optional
    corrector), decode, in normalised units. `ups.surrogate.Surrogate` is its public face."""

    def __init__(
        self,
        meta: DataMeta,
        decoder: nn.Module,
        operator: nn.Module,
        encoder: nn.Module | None = None,
        corrector: Corrector | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.meta, self.encoder, self.decoder, self.operator, self.corrector = (
            meta,
            encoder,
            decoder,
            operator,
            corrector,
        )
        self.device = torch.device(device)
        self.points = torch.as_tensor(meta.grid, device=self.device).reshape(1, -1, meta.grid.shape[-1])
        self.dts = torch.tensor(meta.dts, device=self.device)
        self.stats = norm_stats(meta, self.device)

    def with_corrector(self, corrector: Corrector | None) -> LatentStack:
        """The same stack with another corrector (the networks are shared, not copied)."""
        other = copy.copy(self)
        other.corrector = corrector
        return other

    @torch.no_grad()
    def encode(self, u: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            raise RuntimeError("this surrogate was built without an encoder; it can only roll out latents")
        return self.encoder(u)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, tokens, dim) -> (B, X[, Y], C) normalised fields on the grid, `FRAMES` frames at a time:
        the decoder's activations at every grid point are the largest tensors of validation and
        evaluation, and a rollout decoded at once made them grow with the val set."""
        out = chunked(lambda x: self.decoder(x, self.points), z)
        return out.reshape(len(z), *self.meta.spatial_shape, -1)

    def denormalize(self, u: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return to_physical(u, task, *self.stats)

    @torch.no_grad()
    def rollout(
        self, z0: torch.Tensor, steps: int, task: torch.Tensor, gen: torch.Generator | None = None, correct: bool = True
    ) -> torch.Tensor:
        """Autoregressive latent rollout: (B, tokens, dim) -> (B, steps, tokens, dim)."""
        dt = self.dts[task]
        z, out = z0, []
        for _ in range(steps):
            z = self.operator(z, dt, task)
            if correct and self.corrector is not None:
                fixed = z + self.corrector(z, gen)
                z = fixed if self.corrector.feedback else z
                out.append(fixed)
            else:
                out.append(z)
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def predict_fields(
        self, z0: torch.Tensor, steps: int, task: torch.Tensor, gen: torch.Generator | None = None, correct: bool = True
    ) -> torch.Tensor:
        """Rollout decoded to physical units: (B, steps, X[, Y], C)."""
        zs = self.rollout(z0, steps, task, gen, correct)
        u = self.decode(zs.flatten(0, 1)).reshape(len(z0), steps, *self.meta.spatial_shape, -1)
        return self.denormalize(u, task)

    @torch.no_grad()
    def forecast(
        self, window: torch.Tensor, steps: int, task: torch.Tensor, gen: torch.Generator | None = None,
        correct: bool = True,
    ) -> torch.Tensor:  # fmt: skip
        """The prediction that evaluation scores and `Surrogate.rollout` returns: from the normalised
        input frames (B, frames_in, X[, Y], C), the `steps` frames after the last one, in physical units."""
        return self.predict_fields(self.encode(window[:, -1]), steps, task, gen, correct)


Surrogate = LatentStack  # the name this class had before ups.surrogate.Surrogate (kept while callers move)


FRAMES = 512  # frames per network call outside the training step (validation, evaluation, setup)


def chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int = FRAMES) -> torch.Tensor:
    """Apply a network to a large stack in chunks (setup and validation, not the hot path)."""
    return torch.cat([fn(x[i : i + size]) for i in range(0, len(x), size)]) if len(x) else x


def norm_stats(meta: DataMeta, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task normaliser mean and std as (tasks, C) tensors."""
    mean = torch.stack([torch.as_tensor(n.mean) for n in meta.normalizers]).to(device)
    std = torch.stack([torch.as_tensor(n.std) for n in meta.normalizers]).to(device)
    return mean, std


def to_physical(u: torch.Tensor, task: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Undo the per-task normalisation of (B, ..., C) fields."""
    shape = (len(task),) + (1,) * (u.dim() - 2) + (-1,)
    return u * std[task].reshape(shape) + mean[task].reshape(shape)


def frame_nrmse(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """PDEBench's nRMSE per (sample, frame), averaged over channels: (B, T, X.., C) -> (B, T)."""
    dims = tuple(range(2, pred.dim() - 1))
    err = (pred - true).pow(2).mean(dims).sqrt()
    ref = true.pow(2).mean(dims).sqrt().clamp_min(1e-12)
    return (err / ref).mean(-1)
