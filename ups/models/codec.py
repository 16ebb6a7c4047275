"""GridEncoder (fields on a grid -> latent tokens) and AnyPointDecoder (tokens -> field at any point).

Positions are normalised to [0, 1) per axis by the data layer, so the same weights read any
domain the file declares. The encoder patchifies, mixes patches with self-attention and pools them
into a fixed number of tokens with learned queries; the decoder lets each query point
cross-attend to the tokens, so it can be trained on a random subset of points and evaluated on
the full grid (or anywhere else).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from ups.models.layers import (
    MLP,
    AttentionNetConfig,
    Block,
    CrossBlock,
    block_parameters,
    fourier_dim,
    fourier_features,
)
from ups.models.registry import LatentSpace, register
from ups.schema import NetSize, NonNegInt, PosInt

if TYPE_CHECKING:
    from ups.data.views import DataMeta


def patchify(u: torch.Tensor, p: int) -> torch.Tensor:
    """(B, X[, Y], C) -> (B, patches, p^d * C), patches in row-major grid order."""
    if u.dim() == 3:
        b, x, c = u.shape
        return u.reshape(b, x // p, p * c)
    b, x, y, c = u.shape
    u = u.reshape(b, x // p, p, y // p, p, c).permute(0, 1, 3, 2, 4, 5)
    return u.reshape(b, (x // p) * (y // p), p * p * c)


class PatchAttentionConfig(AttentionNetConfig):
    """`model.encoder` with `arch: patch_attention` (the default encoder)."""

    arch: Literal["patch_attention"] = "patch_attention"
    patch_size: PosInt = 4
    depth: NonNegInt = 1
    frequencies: PosInt = 6  # Fourier features of patch centres

    def estimate_parameters(self, size: NetSize) -> int:
        h = self.hidden
        embed = (self.patch_size**size.dims * size.channels + fourier_dim(size.dims, self.frequencies)) * h
        return embed + (self.depth + 1) * block_parameters(h, self.mlp_ratio, False) + size.tokens * h + h * size.dim


class CrossAttentionConfig(AttentionNetConfig):
    """`model.decoder` with `arch: cross_attention` (the default decoder)."""

    arch: Literal["cross_attention"] = "cross_attention"
    frequencies: PosInt = 8  # Fourier features of the query coordinates

    def estimate_parameters(self, size: NetSize) -> int:
        h = self.hidden
        inputs = fourier_dim(size.dims, self.frequencies) + size.dim + h + size.channels
        return inputs * h + self.depth * block_parameters(h, self.mlp_ratio, False)


class GridEncoder(nn.Module):
    centres: torch.Tensor  # (patches, d) patch centres, a non-persistent buffer

    def __init__(self, grid: torch.Tensor, channels: int, tokens: int, dim: int, cfg: PatchAttentionConfig) -> None:
        """`grid`: (X[, Y], d) positions in [0, 1); its patch centres are fixed buffers."""
        super().__init__()
        self.p, self.frequencies = cfg.patch_size, cfg.frequencies
        d = grid.shape[-1]
        centres = patchify(grid[None].float(), self.p).reshape(1, -1, self.p**d, d).mean(2)[0]
        self.register_buffer("centres", centres, persistent=False)
        self.embed = nn.Linear(self.p**d * channels + fourier_dim(d, self.frequencies), cfg.hidden)
        self.blocks = nn.ModuleList(Block(cfg.hidden, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.queries = nn.Parameter(torch.randn(tokens, cfg.hidden) * 0.02)
        self.pool = CrossBlock(cfg.hidden, cfg.heads, cfg.mlp_ratio)
        self.out = nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, dim))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """(B, X[, Y], C) normalised fields -> (B, tokens, dim)."""
        patches = patchify(u, self.p)
        pos = fourier_features(self.centres, self.frequencies).to(patches.dtype)
        h = self.embed(torch.cat([patches, pos.expand(len(u), -1, -1)], dim=-1))
        for block in self.blocks:
            h = block(h)
        return self.out(self.pool(self.queries.expand(len(u), -1, -1), h))


class AnyPointDecoder(nn.Module):
    def __init__(self, spatial_dims: int, channels: int, dim: int, cfg: CrossAttentionConfig) -> None:
        super().__init__()
        self.frequencies = cfg.frequencies
        self.query = nn.Linear(fourier_dim(spatial_dims, cfg.frequencies), cfg.hidden)
        self.context = nn.Linear(dim, cfg.hidden) if cfg.depth else None  # depth 0: no use for tokens
        self.blocks = nn.ModuleList(CrossBlock(cfg.hidden, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.head = nn.Sequential(nn.LayerNorm(cfg.hidden), MLP(cfg.hidden, cfg.hidden, channels))

    def forward(self, z: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """z (B, tokens, dim), points (B or 1, Q, d) in [0, 1) -> (B, Q, C)."""
        q = self.query(fourier_features(points, self.frequencies).to(z.dtype)).expand(len(z), -1, -1)
        ctx = self.context(z) if self.context is not None else None
        for block in self.blocks:
            q = block(q, ctx)
        return self.head(q)


# -- Registered builders (`model.<role>.arch`) --------------------------------------------------


@register("encoder", "patch_attention", config=PatchAttentionConfig)
def _encoder(cfg: PatchAttentionConfig, meta: DataMeta, latent: LatentSpace) -> GridEncoder:
    return GridEncoder(torch.as_tensor(meta.grid), meta.channels, latent.tokens, latent.dim, cfg)


@register("decoder", "cross_attention", config=CrossAttentionConfig)
def _decoder(cfg: CrossAttentionConfig, meta: DataMeta, latent: LatentSpace) -> AnyPointDecoder:
    return AnyPointDecoder(meta.grid.shape[-1], meta.channels, latent.dim, cfg)
