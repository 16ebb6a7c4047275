"""Networks that act in latent space: the time-stepping operator, the residual denoiser (and its
one-step consistency student), and the steady prior."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from ups.models.layers import (
    MLP,
    AttentionNetConfig,
    TokenTransformer,
    block_parameters,
    conditioned_trunk_parameters,
    sinusoidal_embedding,
)
from ups.models.registry import LatentSpace, register
from ups.schema import NetSize, NonNegInt, PosInt

if TYPE_CHECKING:
    from ups.data.views import DataMeta


class TransformerOperatorConfig(AttentionNetConfig):
    """`model.operator` with `arch: transformer` (the default operator)."""

    arch: Literal["transformer"] = "transformer"
    hidden: PosInt = 96
    depth: NonNegInt = 3

    def estimate_parameters(self, size: NetSize) -> int:
        return _trunk_parameters(self, size, size.dim)


class TransformerDenoiserConfig(AttentionNetConfig):
    """`model.denoiser` with `arch: transformer` (the default corrector network)."""

    arch: Literal["transformer"] = "transformer"
    hidden: PosInt = 96
    depth: NonNegInt = 2

    def estimate_parameters(self, size: NetSize) -> int:
        return _trunk_parameters(self, size, 2 * size.dim)


class TransformerSteadyConfig(AttentionNetConfig):
    """`model.steady` with `arch: transformer`."""

    arch: Literal["transformer"] = "transformer"
    steps: PosInt = 4  # refinement iterations

    def estimate_parameters(self, size: NetSize) -> int:
        return _trunk_parameters(self, size, size.dim)


def _trunk_parameters(cfg: AttentionNetConfig, size: NetSize, inputs: int) -> int:
    layer = block_parameters(cfg.hidden, cfg.mlp_ratio, True)
    return conditioned_trunk_parameters(cfg.hidden, cfg.depth, layer, inputs, size.dim, size.tokens)


def _token_transformer(tokens: int, inputs: int, dim: int, cfg: AttentionNetConfig) -> Callable[[], nn.Module]:
    return lambda: TokenTransformer(tokens, inputs, dim, cfg.hidden, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.hidden)


class LatentOperator(nn.Module):
    """z_{t+1} = z_t + f(z_t, Δt, task).

    Δt enters as an embedding of log Δt (scale-free across datasets); a task embedding lets one
    operator serve several PDEs. The output layer starts at zero, so an untrained operator is
    the persistence baseline and training can only move away from it by learning something.
    """

    def __init__(self, hidden: int, make_trunk: Callable[[], nn.Module], num_tasks: int = 1) -> None:
        """`make_trunk`: builds any (x, cond) -> update network with cond of size `hidden` (a
        TokenTransformer, a SpectralTrunk); called after the embeddings, so the order in which a
        seed's weights are drawn is the builder's to keep."""
        super().__init__()
        self.dt_embed = MLP(hidden, hidden)
        self.task_embed = nn.Embedding(num_tasks, hidden) if num_tasks > 1 else None
        self.trunk = make_trunk()
        self.hidden = hidden

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
        hidden: int,
        make_trunk: Callable[[], nn.Module],
        *,
        consistency: bool = False,
        sigma_min: float | None = None,
    ) -> None:
        """`make_trunk`: builds the (concat(x, c), σ-embedding) -> residual network. `sigma_min`
        (consistency only): the lowest noise level, where f(x, sigma_min) = x; the caller passes
        its diffusion's (stages.diffusion_residual.sigma_min)."""
        if consistency and sigma_min is None:
            raise ValueError("a consistency denoiser needs sigma_min (the lowest noise level of its diffusion)")
        super().__init__()
        self.noise_embed = MLP(hidden, hidden)
        self.trunk = make_trunk()
        self.hidden, self.consistency, self.sigma_min = hidden, consistency, sigma_min or 0.0

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

    def __init__(self, tokens: int, dim: int, cfg: TransformerSteadyConfig) -> None:
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


@register("operator", "transformer", config=TransformerOperatorConfig)
def _operator(cfg: TransformerOperatorConfig, meta: DataMeta, latent: LatentSpace) -> LatentOperator:
    return LatentOperator(cfg.hidden, _token_transformer(latent.tokens, latent.dim, latent.dim, cfg), len(meta.tasks))


@register("denoiser", "transformer", config=TransformerDenoiserConfig)
def _denoiser(
    cfg: TransformerDenoiserConfig,
    meta: DataMeta,
    latent: LatentSpace,
    *,
    consistency: bool = False,
    sigma_min: float | None = None,
) -> ResidualDenoiser:
    trunk = _token_transformer(latent.tokens, 2 * latent.dim, latent.dim, cfg)
    return ResidualDenoiser(cfg.hidden, trunk, consistency=consistency, sigma_min=sigma_min)


@register("steady", "transformer", config=TransformerSteadyConfig)
def _steady(cfg: TransformerSteadyConfig, meta: DataMeta, latent: LatentSpace) -> SteadyPrior:
    return SteadyPrior(latent.tokens, latent.dim, cfg)
