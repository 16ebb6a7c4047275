"""A fixed Fourier codec: the latent is the field band-limited to a coarse grid.

For a smooth periodic field (the FNO paper's Navier–Stokes at ν = 1e-3 keeps ~1e-6 of its energy
beyond |k| = 8 on 64²) a learned codec spends its training minutes learning, imperfectly, what
spectral truncation gives exactly: on that data a 16 × 16 band-limited grid (16× fewer numbers
than the field) reconstructs to nRMSE ~4e-4 at no training cost, where the light learned
convolutional codec reached ~1e-2 after 6 minutes (README Results, "codec"). The latent keeps the
grid's geometry, so the spectral operator and corrector read it as a coarse field.

Encoder: the lowest modes of the field's FFT (|k| below half the coarse grid on each axis, the
Nyquist mode dropped so the map is real and exact), read back on the coarse grid: one token per
`patch_size`^d patch, one number per channel (`latent.dim` = the field's channels). Decoder: the
same modes zero-padded back to the fine grid. decode(encode(u)) is the projection on the kept
modes, and encode(decode(z)) = z for every coarse field z without its Nyquist mode.
No trainable parameters: the autoencoder stage only checks and exports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from ups.models.grid import _channels_first, _channels_last, latent_shape, sample_periodic
from ups.models.registry import LatentSpace, register
from ups.schema import ArchConfig, PosInt

if TYPE_CHECKING:
    from ups.data.views import DataMeta


def _kept(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices, in an FFT axis of n_in and one of n_out, of the modes |k| < min(n_in, n_out) / 2."""
    kc = (min(n_in, n_out) + 1) // 2  # k = 0 .. kc-1 and -(kc-1) .. -1; an even size drops its Nyquist
    pos = torch.arange(kc, device=device)
    neg = torch.arange(1, kc, device=device)
    return torch.cat([pos, n_in - neg.flip(0)]), torch.cat([pos, n_out - neg.flip(0)])


def resample(h: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Band-limited resampling of (B, C, *S) to (B, C, *shape): the modes both grids hold, no others."""
    dims = tuple(range(2, h.ndim))
    work = h.to(torch.promote_types(h.dtype, torch.float32))  # float64 stays float64
    spec = torch.fft.rfftn(work, dim=dims, norm="forward")  # coefficients independent of the grid size
    out = spec.new_zeros((*h.shape[:2], *shape[:-1], shape[-1] // 2 + 1))
    index_in: list[torch.Tensor] = []
    index_out: list[torch.Tensor] = []
    for n_in, n_out in zip(h.shape[2:-1], shape[:-1]):
        a, b = _kept(n_in, n_out, h.device)
        index_in.append(a)
        index_out.append(b)
    last = (min(h.shape[-1], shape[-1]) + 1) // 2  # the rfft axis: k = 0 .. kc-1
    index_in.append(torch.arange(last, device=h.device))
    index_out.append(torch.arange(last, device=h.device))
    keep = (slice(None), slice(None))
    src = spec[keep + tuple(torch.meshgrid(*index_in, indexing="ij"))]
    out[keep + tuple(torch.meshgrid(*index_out, indexing="ij"))] = src
    return torch.fft.irfftn(out, s=shape, dim=dims, norm="forward").to(h.dtype)


class FourierEncoder(nn.Module):
    """(B, X[, Y], C) -> (B, prod(X/p ..), C): the field band-limited to the coarse grid."""

    def __init__(self, spatial_shape: tuple[int, ...], patch_size: int) -> None:
        super().__init__()
        self.coarse_shape = latent_shape(spatial_shape, patch_size)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return _channels_last(resample(_channels_first(u), self.coarse_shape)).flatten(1, -2)


class FourierDecoder(nn.Module):
    """(B, tokens, C) -> the field on the fine grid (the coarse modes zero-padded), read at any points."""

    def __init__(self, grid: torch.Tensor, patch_size: int) -> None:
        super().__init__()
        self.shape = tuple(grid.shape[:-1])
        self.coarse_shape = latent_shape(self.shape, patch_size)
        self.origin: torch.Tensor
        self.register_buffer("origin", grid.reshape(-1, grid.shape[-1])[0].float(), persistent=False)

    def field(self, z: torch.Tensor) -> torch.Tensor:
        h = _channels_first(z.reshape(len(z), *self.coarse_shape, z.shape[-1]))
        return _channels_last(resample(h, self.shape))

    def forward(self, z: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return sample_periodic(self.field(z), points, self.origin)


class FourierEncoderConfig(ArchConfig):
    """`model.encoder` with `arch: fourier`: nothing to learn, only the coarse grid's patch size."""

    arch: Literal["fourier"] = "fourier"
    patch_size: PosInt = 4


class FourierDecoderConfig(ArchConfig):
    """`model.decoder` with `arch: fourier`: no keys (the patch size is the encoder's)."""

    arch: Literal["fourier"] = "fourier"


@register("encoder", "fourier", config=FourierEncoderConfig, anchored=True, channels_as_dim=True)
def _encoder(cfg: FourierEncoderConfig, meta: DataMeta, latent: LatentSpace) -> FourierEncoder:
    return FourierEncoder(meta.spatial_shape, cfg.patch_size)


@register("decoder", "fourier", config=FourierDecoderConfig, needs_anchored=True, channels_as_dim=True)
def _decoder(cfg: FourierDecoderConfig, meta: DataMeta, latent: LatentSpace) -> FourierDecoder:
    assert latent.patch_size is not None  # needs_anchored: the factory refused anything else
    return FourierDecoder(torch.as_tensor(meta.grid), latent.patch_size)
