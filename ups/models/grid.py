"""Spatially anchored networks: one latent token per patch of the grid, in grid order.

The patch-attention codec pools a frame into a few global tokens with learned absolute positions:
nothing in it is local or shift-aware, and a local, translation-symmetric PDE (periodic Burgers)
has to be relearned at every position. Here the latent is a coarse grid instead: token i is
the patch at grid position i, the encoder and decoder are periodic convolutions (shift-equivariant
by construction), and the operator mixes tokens with spectral convolutions over the latent grid
(an FNO in latent space, SpectralTrunk, which the residual denoiser can use too). Issue 12
measured what this buys (bench/RESULTS.md).

Shapes follow the rest of the stack: fields (B, X[, Y], C), latents (B, tokens, dim) with
tokens = prod(grid // patch_size) in row-major order, so the latent cache, the correctors and
evaluation work unchanged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from ups.models.fno import SpectralConv, spectral_parameters
from ups.models.latent import LatentOperator, ResidualDenoiser
from ups.models.layers import conditioned_trunk_parameters
from ups.models.registry import LatentSpace, register
from ups.schema import ArchConfig, NetSize, NonNegInt, PosInt

if TYPE_CHECKING:
    from ups.data.views import DataMeta

KERNEL = 5  # odd: a periodic 'same' convolution


def _conv_cls(dims: int) -> type[nn.Conv1d] | type[nn.Conv2d]:
    return nn.Conv1d if dims == 1 else nn.Conv2d


def _conv(dims: int, cin: int, cout: int, kernel: int = KERNEL) -> nn.Module:
    return _conv_cls(dims)(cin, cout, kernel, padding=kernel // 2, padding_mode="circular")


class ConvEncoderConfig(ArchConfig):
    """`model.encoder` with `arch: conv`: `depth` residual blocks of `hidden` channels on the grid
    and again on the coarse grid of `patch_size` cells per token."""

    arch: Literal["conv"] = "conv"
    hidden: PosInt = 64
    depth: NonNegInt = 1
    patch_size: PosInt = 4

    def estimate_parameters(self, size: NetSize) -> int:
        w, k = self.hidden, KERNEL**size.dims
        return k * (size.channels * w + 4 * self.depth * w * w) + w * w * self.patch_size**size.dims + w * size.dim


class ConvDecoderConfig(ArchConfig):
    """`model.decoder` with `arch: conv`, the mirror of the conv encoder (whose patch size it uses)."""

    arch: Literal["conv"] = "conv"
    hidden: PosInt = 64
    depth: NonNegInt = 2

    def estimate_parameters(self, size: NetSize) -> int:
        w, k = self.hidden, KERNEL**size.dims
        return size.dim * w + 4 * self.depth * w * w * k + w * w * 4**size.dims + w * size.channels


class _SpectralTrunkConfig(ArchConfig):
    hidden: PosInt = 96
    depth: NonNegInt = 3
    modes: PosInt = 16  # Fourier modes per axis of the latent grid
    # Harmonics of the position fed in beside the latent (sin and cos of 2πk·x_i for k = 1..n, per
    # axis). 0 keeps the trunk exactly shift-equivariant, right for a shift-invariant PDE (periodic
    # Burgers, advection); a PDE whose forcing or coefficients depend on where (the FNO paper's
    # Navier–Stokes forcing) needs them, as the FNO's own grid input does.
    positions: NonNegInt = 0

    def _trunk_parameters(self, size: NetSize, inputs: int) -> int:
        h = self.hidden
        layer = spectral_parameters(h, self.modes, size.dims) + h * h
        inputs += 2 * size.dims * self.positions
        return conditioned_trunk_parameters(h, self.depth, layer, inputs, size.dim, size.tokens)


class SpectralOperatorConfig(_SpectralTrunkConfig):
    """`model.operator` with `arch: spectral`: an FNO over the latent grid (SpectralTrunk)."""

    arch: Literal["spectral"] = "spectral"

    def estimate_parameters(self, size: NetSize) -> int:
        return self._trunk_parameters(size, size.dim)


class SpectralDenoiserConfig(_SpectralTrunkConfig):
    """`model.denoiser` with `arch: spectral`."""

    arch: Literal["spectral"] = "spectral"
    depth: NonNegInt = 2

    def estimate_parameters(self, size: NetSize) -> int:
        return self._trunk_parameters(size, 2 * size.dim)


class ResBlock(nn.Module):
    """h + conv(gelu(conv(gelu(h)))), periodic; GroupNorm-free so a batch of one behaves like any."""

    def __init__(self, dims: int, width: int) -> None:
        super().__init__()
        self.a, self.b = _conv(dims, width, width), _conv(dims, width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.b(F.gelu(self.a(F.gelu(h))))


def latent_shape(spatial_shape: tuple[int, ...], patch_size: int) -> tuple[int, ...]:
    return tuple(n // patch_size for n in spatial_shape)


def _channels_first(u: torch.Tensor) -> torch.Tensor:  # (B, X.., C) -> (B, C, X..)
    return u.movedim(-1, 1)


def _channels_last(h: torch.Tensor) -> torch.Tensor:  # (B, C, X..) -> (B, X.., C)
    return h.movedim(1, -1)


class ConvEncoder(nn.Module):
    """(B, X[, Y], C) -> (B, prod(X/p ..), dim): convolutions, a strided patch convolution, more
    convolutions on the coarse grid. `depth` residual blocks at each resolution."""

    def __init__(self, spatial_shape: tuple[int, ...], channels: int, dim: int, cfg: ConvEncoderConfig) -> None:
        super().__init__()
        d, p, w = len(spatial_shape), cfg.patch_size, cfg.hidden
        conv = _conv_cls(d)
        self.lift = _conv(d, channels, w)
        self.fine = nn.Sequential(*(ResBlock(d, w) for _ in range(cfg.depth)))
        self.down = conv(w, w, p, stride=p)
        self.coarse = nn.Sequential(*(ResBlock(d, w) for _ in range(cfg.depth)))
        self.out = conv(w, dim, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = self.coarse(self.down(self.fine(self.lift(_channels_first(u)))))
        return _channels_last(self.out(h)).flatten(1, -2)


class ConvDecoder(nn.Module):
    """(B, tokens, dim) -> the field on the grid, read at any points in [0, 1)^d.

    The mirror of ConvEncoder (a transposed patch convolution back to the grid). Points between
    grid nodes are read by periodic (bi)linear interpolation, so the autoencoder can still train
    on random query points and evaluation reads the grid exactly.
    """

    def __init__(self, grid: torch.Tensor, channels: int, dim: int, cfg: ConvDecoderConfig, patch_size: int) -> None:
        super().__init__()
        self.shape = tuple(grid.shape[:-1])
        self.coarse_shape = latent_shape(self.shape, patch_size)
        d, w = len(self.shape), cfg.hidden
        self.origin: torch.Tensor
        self.register_buffer("origin", grid.reshape(-1, d)[0].float(), persistent=False)  # the first node
        up = nn.ConvTranspose1d if d == 1 else nn.ConvTranspose2d
        conv = _conv_cls(d)
        self.inp = conv(dim, w, 1)
        self.coarse = nn.Sequential(*(ResBlock(d, w) for _ in range(cfg.depth)))
        self.up = up(w, w, patch_size, stride=patch_size)
        self.fine = nn.Sequential(*(ResBlock(d, w) for _ in range(cfg.depth)))
        self.head = conv(w, channels, 1)

    def field(self, z: torch.Tensor) -> torch.Tensor:
        """(B, tokens, dim) -> (B, X[, Y], C) on the grid."""
        h = _channels_first(z.reshape(len(z), *self.coarse_shape, z.shape[-1]))
        return _channels_last(self.head(self.fine(self.up(self.coarse(self.inp(h))))))

    def forward(self, z: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """z (B, tokens, dim), points (B or 1, Q, d) in [0, 1) -> (B, Q, C)."""
        return sample_periodic(self.field(z), points, self.origin)


def sample_periodic(u: torch.Tensor, points: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """Periodic (bi)linear interpolation of (B, X[, Y], C) grid values at (B or 1, Q, d) points.

    Node k of an axis with n nodes sits at origin + k/n (cell centres, ups.data.views). A point
    within 1e-4 cells of a node reads that node exactly, so on-grid queries are not blurred by
    float rounding.
    """
    b, shape, c = len(u), u.shape[1:-1], u.shape[-1]
    pts = points.expand(b, -1, -1)
    idx, weights = [], []
    for axis, n in enumerate(shape):
        s = (pts[..., axis] - origin[axis]) * n
        snapped = torch.where((s - s.round()).abs() < 1e-4, s.round(), s)
        lo = torch.floor(snapped)
        idx.append(lo.long())
        weights.append(snapped - lo)
    flat = u.reshape(b, -1, c)
    strides = [math.prod(shape[a + 1 :]) for a in range(len(shape))]
    out = torch.zeros(b, pts.shape[1], c, dtype=u.dtype, device=u.device)
    for corner in range(2 ** len(shape)):
        lin = torch.zeros_like(idx[0])
        w = torch.ones_like(weights[0])
        for axis, n in enumerate(shape):
            bit = (corner >> axis) & 1
            lin = lin + ((idx[axis] + bit) % n) * strides[axis]
            w = w * (weights[axis] if bit else 1 - weights[axis])
        out = out + w[..., None] * torch.gather(flat, 1, lin[..., None].expand(-1, -1, c))
    return out


class SpectralTrunk(nn.Module):
    """An FNO over the latent grid with FiLM conditioning: (B, tokens, in_dim), cond -> (B, tokens, out_dim).

    The same call as TokenTransformer, so LatentOperator and ResidualDenoiser take either. The
    conditioning vector (Δt and task, or the noise level) scales and shifts every layer's channels;
    FiLM starts as the identity and the output layer at zero, so a network built on this starts as
    "no change", like one built on the transformer.
    """

    def __init__(
        self, shape: tuple[int, ...], in_dim: int, out_dim: int, hidden: int, depth: int, modes: int, positions: int = 0
    ) -> None:
        super().__init__()
        d, w = len(shape), hidden
        conv = _conv_cls(d)
        self.shape = shape
        self.pos_features: torch.Tensor  # (1, 2·d·positions, *shape); not saved: a function of the grid
        self.register_buffer("pos_features", position_features(shape, positions), persistent=False)
        self.lift = conv(in_dim + self.pos_features.shape[1], w, 1)
        self.spectral = nn.ModuleList(SpectralConv(w, modes, d) for _ in range(depth))
        self.pointwise = nn.ModuleList(conv(w, w, 1) for _ in range(depth))
        films = [nn.Linear(w, 2 * w) for _ in range(depth)]
        last = conv(2 * w, out_dim, 1)
        for layer in (*films, last):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(cast(torch.Tensor, layer.bias))
        self.film = nn.ModuleList(films)
        self.project = nn.Sequential(conv(w, 2 * w, 1), nn.GELU(), last)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = _channels_first(x.reshape(len(x), *self.shape, x.shape[-1]))
        if self.pos_features.shape[1]:
            h = torch.cat([h, self.pos_features.to(h.dtype).expand(len(h), *self.pos_features.shape[1:])], dim=1)
        h = self.lift(h)
        expand = (slice(None), slice(None)) + (None,) * len(self.shape)
        for spec, point, film in zip(self.spectral, self.pointwise, self.film):
            scale, shift = film(cond).chunk(2, dim=-1)
            h = F.gelu((spec(h) + point(h)) * (1 + scale[expand]) + shift[expand])
        return _channels_last(self.project(h)).flatten(1, -2)


def position_features(shape: tuple[int, ...], harmonics: int) -> torch.Tensor:
    """(1, 2·len(shape)·harmonics, *shape): sin and cos of 2πk·i/n along each axis of the grid, for
    k = 1..harmonics: periodic, so the trunk stays periodic; empty for 0 harmonics."""
    feats = []
    for axis, n in enumerate(shape):
        x = torch.arange(n, dtype=torch.float64) / n
        view = [1] * len(shape)
        view[axis] = n
        for k in range(1, harmonics + 1):
            for f in (torch.sin, torch.cos):
                feats.append(f(2 * math.pi * k * x).reshape(view).expand(shape))
    if not feats:
        return torch.zeros(1, 0, *shape)
    return torch.stack(feats).float()[None]


# -- Registered builders (`model.<role>.arch`) --------------------------------------------------


@register("encoder", "conv", config=ConvEncoderConfig, anchored=True)
def _encoder(cfg: ConvEncoderConfig, meta: DataMeta, latent: LatentSpace) -> ConvEncoder:
    return ConvEncoder(meta.spatial_shape, meta.channels, latent.dim, cfg)


@register("decoder", "conv", config=ConvDecoderConfig, needs_anchored=True)
def _decoder(cfg: ConvDecoderConfig, meta: DataMeta, latent: LatentSpace) -> ConvDecoder:
    return ConvDecoder(torch.as_tensor(meta.grid), meta.channels, latent.dim, cfg, _anchored(latent)[1])


@register("operator", "spectral", config=SpectralOperatorConfig, needs_anchored=True)
def _operator(cfg: SpectralOperatorConfig, meta: DataMeta, latent: LatentSpace) -> LatentOperator:
    trunk = SpectralTrunk(_anchored(latent)[0], latent.dim, latent.dim, cfg.hidden, cfg.depth, cfg.modes, cfg.positions)
    return LatentOperator(cfg.hidden, lambda: trunk, len(meta.tasks))  # the trunk's weights are drawn first


@register("denoiser", "spectral", config=SpectralDenoiserConfig, needs_anchored=True)
def _denoiser(
    cfg: SpectralDenoiserConfig,
    meta: DataMeta,
    latent: LatentSpace,
    *,
    consistency: bool = False,
    sigma_min: float | None = None,
) -> ResidualDenoiser:
    dim = latent.dim
    trunk = SpectralTrunk(_anchored(latent)[0], 2 * dim, dim, cfg.hidden, cfg.depth, cfg.modes, cfg.positions)
    return ResidualDenoiser(cfg.hidden, lambda: trunk, consistency=consistency, sigma_min=sigma_min)


def _anchored(latent: LatentSpace) -> tuple[tuple[int, ...], int]:
    """The latent grid and the patch size (preflight refuses these networks behind other encoders)."""
    if latent.grid is None or latent.patch_size is None:
        raise ValueError("this network reads the latent as a grid: it needs an anchored encoder (model.encoder.arch)")
    return latent.grid, latent.patch_size
