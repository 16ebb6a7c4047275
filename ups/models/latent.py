"""Networks that act in latent space: the time-stepping operator, the residual denoiser (and its
one-step consistency student), and the steady prior."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ups.models.layers import MLP, TokenTransformer, sinusoidal_embedding
from ups.models.registry import LatentSpace, register
from ups.schema import DenoiserNetConfig, OperatorNetConfig, SteadyNetConfig

if TYPE_CHECKING:
    from ups.data.views import DataMeta


class LatentOperator(nn.Module):
    """z_{t+1} = z_t + f(z_t, Δt, task).

    Δt enters as an embedding of log Δt (scale-free across datasets); a task embedding lets one
    operator serve several PDEs. The output layer starts at zero, so an untrained operator is
    the persistence baseline and training can only move away from it by learning something.
    """

    def __init__(
        self, tokens: int, dim: int, cfg: OperatorNetConfig, num_tasks: int = 1, trunk: nn.Module | None = None
    ) -> None:
        """`trunk`: any (x, cond) -> update network with cond of size cfg.hidden; default a TokenTransformer."""
        super().__init__()
        self.dt_embed = MLP(cfg.hidden, cfg.hidden)
        self.task_embed = nn.Embedding(num_tasks, cfg.hidden) if num_tasks > 1 else None
        self.trunk = trunk or TokenTransformer(
            tokens, dim, dim, cfg.hidden, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.hidden
        )
        self.hidden = cfg.hidden

    def forward(self, z: torch.Tensor, dt: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        cond = self.dt_embed(sinusoidal_embedding(torch.log(dt), self.hidden).to(z.dtype))
        if self.task_embed is not None and task is not None:
            cond = cond + self.task_embed(task)
        return z + self.trunk(z, cond)


class ResidualDenoiser(nn.Module):
    """D(x; σ, c): denoises a noisy operator residual x at noise level σ, given c = op(z_t).

    EDM preconditioning (Karras et al. 2022) for data of unit std (the stage standardises the
    residual). With `consistency=True` the same network is parametrised as a consistency model
    (Song et al. 2023): c_skip(σ_min) = 1 and c_out(σ_min) = 0, so f(x, σ_min) = x exactly.
    """

    def __init__(
        self,
        tokens: int,
        dim: int,
        cfg: DenoiserNetConfig,
        *,
        consistency: bool = False,
        sigma_min: float | None = None,
        trunk: nn.Module | None = None,
    ) -> None:
        """`sigma_min` (consistency only): the lowest noise level, where f(x, sigma_min) = x; the
        caller passes its diffusion's (stages.diffusion_residual.sigma_min)."""
        if consistency and sigma_min is None:
            raise ValueError("a consistency denoiser needs sigma_min (the lowest noise level of its diffusion)")
        super().__init__()
        self.noise_embed = MLP(cfg.hidden, cfg.hidden)
        self.trunk = trunk or TokenTransformer(
            tokens, 2 * dim, dim, cfg.hidden, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.hidden
        )
        self.hidden, self.consistency, self.sigma_min = cfg.hidden, consistency, sigma_min or 0.0

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s = sigma.to(x.dtype)[:, None, None]
        c_in = 1 / (s**2 + 1).sqrt()
        if self.consistency:
            c_skip = 1 / ((s - self.sigma_min) ** 2 + 1)
            c_out = (s - self.sigma_min) / (s**2 + 1).sqrt()
        else:
            c_skip = 1 / (s**2 + 1)
            c_out = s / (s**2 + 1).sqrt()
        emb = self.noise_embed(sinusoidal_embedding(torch.log(sigma) / 4, self.hidden).to(x.dtype))
        return c_skip * x + c_out * self.trunk(torch.cat([c_in * x, cond], dim=-1), emb)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """n noise levels from σ_max down to σ_min, spaced for the probability-flow ODE (EDM eq. 5)."""
    i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    s = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return s.float()


@torch.no_grad()
def heun_sample(denoiser: nn.Module, cond: torch.Tensor, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Integrate the probability-flow ODE from x at sigmas[0] down to 0 (EDM Algorithm 1)."""
    sigmas = torch.cat([sigmas.to(x.device), sigmas.new_zeros(1).to(x.device)])
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        sv = s.expand(len(x))
        d = (x - denoiser(x, sv, cond)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - denoiser(x_next, s_next.expand(len(x)), cond)) / s_next
            x_next = x + (s_next - s) * (d + d2) / 2
        x = x_next
    return x


class SteadyPrior(nn.Module):
    """Iterative refinement z <- z + g(z, k/K) toward the terminal (steady) latent of a trajectory."""

    def __init__(self, tokens: int, dim: int, cfg: SteadyNetConfig) -> None:
        super().__init__()
        self.steps, self.hidden = cfg.steps, cfg.hidden
        self.step_embed = MLP(cfg.hidden, cfg.hidden)
        self.trunk = TokenTransformer(tokens, dim, dim, cfg.hidden, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.hidden)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for k in range(self.steps):
            tau = torch.full((len(z),), (k + 1) / self.steps, device=z.device)
            z = z + self.trunk(z, self.step_embed(sinusoidal_embedding(tau, self.hidden).to(z.dtype)))
        return z


# -- Registered builders (`model.<role>.arch`) --------------------------------------------------


@register("operator", "transformer")
def _operator(cfg: OperatorNetConfig, meta: DataMeta, latent: LatentSpace) -> LatentOperator:
    return LatentOperator(latent.tokens, latent.dim, cfg, len(meta.tasks))


@register("denoiser", "transformer")
def _denoiser(
    cfg: DenoiserNetConfig,
    meta: DataMeta,
    latent: LatentSpace,
    *,
    consistency: bool = False,
    sigma_min: float | None = None,
) -> ResidualDenoiser:
    return ResidualDenoiser(latent.tokens, latent.dim, cfg, consistency=consistency, sigma_min=sigma_min)


@register("steady", "transformer")
def _steady(cfg: SteadyNetConfig, meta: DataMeta, latent: LatentSpace) -> SteadyPrior:
    return SteadyPrior(latent.tokens, latent.dim, cfg)
