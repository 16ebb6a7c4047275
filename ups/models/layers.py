"""Building blocks shared by every UPS network: attention, conditioning, Fourier features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from ups.schema import ArchConfig, NonNegInt, PosFloat, PosInt


class AttentionNetConfig(ArchConfig):
    """The keys of a network made of attention blocks (`Block`, `CrossBlock`, `TokenTransformer`);
    each attention architecture's config subclasses it and sets its own defaults."""

    hidden: PosInt = 64
    depth: NonNegInt = 2
    heads: PosInt = 4
    mlp_ratio: PosFloat = 2.0

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> AttentionNetConfig:
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        return self


def block_parameters(hidden: int, mlp_ratio: float, conditioned: bool) -> int:
    """Weights of one attention block: attention 4h², MLP 2rh², adaLN conditioning 6h²."""
    return int((4 + 2 * mlp_ratio + (6 if conditioned else 0)) * hidden * hidden)


def conditioned_trunk_parameters(hidden: int, depth: int, layer: int, inputs: int, outputs: int, tokens: int) -> int:
    """A latent network's dominant weights: its condition MLP, input, position and output
    projections, and `depth` layers of `layer` weights each."""
    return 2 * hidden * hidden + inputs * hidden + tokens * hidden + depth * layer + hidden * outputs


def fourier_features(pos: torch.Tensor, frequencies: int) -> torch.Tensor:
    """[pos, sin(2π·2^k·pos), cos(2π·2^k·pos)] for positions normalised to [0, 1) per axis.

    Integer frequencies keep the features periodic on the unit domain, which suits PDEBench's
    periodic problems and is harmless for bounded ones.
    """
    k = 2.0 ** torch.arange(frequencies, device=pos.device, dtype=pos.dtype)
    ang = 2 * math.pi * pos[..., None] * k  # (..., d, F)
    feats = torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)
    return torch.cat([pos, feats], dim=-1)


def fourier_dim(spatial_dims: int, frequencies: int) -> int:
    return spatial_dims * (1 + 2 * frequencies)


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 1e4) -> torch.Tensor:
    """Transformer-style embedding of a scalar per sample (noise level, log time step)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    ang = x.float()[:, None] * freqs[None] * 1000.0
    emb = torch.cat([ang.cos(), ang.sin()], dim=-1)
    return F.pad(emb, (0, dim % 2))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        context = x if context is None else context
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


class Block(nn.Module):
    """Pre-norm self-attention block; with `cond_dim`, adaLN-Zero conditioning (DiT).

    adaLN-Zero starts every block as the identity, so a deep residual network begins where a
    shallow one would and conditioning (Δt, noise level, task) enters every layer.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, cond_dim: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=cond_dim is None)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=cond_dim is None)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.ada: nn.Sequential | None = None
        if cond_dim is not None:
            modulation = nn.Linear(cond_dim, 6 * dim)
            nn.init.zeros_(modulation.weight)
            nn.init.zeros_(modulation.bias)
            self.ada = nn.Sequential(nn.SiLU(), modulation)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.ada is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        s1, b1, g1, s2, b2, g2 = self.ada(cond)[:, None].chunk(6, dim=-1)
        x = x + g1 * self.attn(self.norm1(x) * (1 + s1) + b1)
        return x + g2 * self.mlp(self.norm2(x) * (1 + s2) + b2)


class CrossBlock(nn.Module):
    """Queries attend to a context (latent tokens or patches), then a feed-forward layer."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, q: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = q + self.attn(self.norm_q(q), self.norm_kv(context))
        return q + self.mlp(self.norm2(q))


class TokenTransformer(nn.Module):
    """A stack of conditioned blocks over latent tokens: the trunk of operator, denoiser and prior."""

    def __init__(
        self,
        tokens: int,
        in_dim: int,
        out_dim: int,
        hidden: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        cond_dim: int,
    ) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, hidden)
        self.pos = nn.Parameter(torch.randn(tokens, hidden) * 0.02)
        self.blocks = nn.ModuleList(Block(hidden, heads, mlp_ratio, cond_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, out_dim)
        nn.init.zeros_(self.out.weight)  # every network built on this starts as "no change"
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.pos
        for block in self.blocks:
            h = block(h, cond)
        return self.out(self.norm(h))
