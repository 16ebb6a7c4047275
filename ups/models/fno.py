"""A Fourier neural operator on the grid: the baseline every latent surrogate is compared with.

PDEBench's FNO protocol: the last `initial_step` frames and the grid coordinates are the input
channels, the next frame is the output, and the model rolls out autoregressively. Spectral
convolutions keep the lowest `modes` Fourier modes per axis (Li et al. 2021); 1D and 2D grids.
Written here (not imported from neuraloperator) so the baseline has no extra dependency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

from ups.models.registry import LatentSpace, register
from ups.schema import ArchConfig, NetSize, PosInt

if TYPE_CHECKING:
    from ups.data.views import DataMeta


class FNOConfig(ArchConfig):
    """`model.baseline` with `arch: fno`; PDEBench's FNO: 12 modes, width 20, 4 layers."""

    arch: Literal["fno"] = "fno"
    modes: PosInt = 12
    width: PosInt = 20
    depth: PosInt = 4
    width_key: ClassVar[str] = "width"

    def estimate_parameters(self, size: NetSize) -> int:
        w = self.width
        lift = (size.frames * size.channels + size.dims) * w
        return lift + self.depth * (spectral_parameters(w, self.modes, size.dims) + w * w) + 128 * (w + size.channels)


def spectral_parameters(width: int, modes: int, dims: int) -> int:
    """Real numbers in one SpectralConv's complex weights (two corners of modes in 2D)."""
    return 2 * width * width * modes**dims * (2 if dims == 2 else 1)


class SpectralConv(nn.Module):
    """u -> irfft(W · rfft(u)) on the lowest `modes` modes of each spatial axis (1D or 2D)."""

    def __init__(self, width: int, modes: int, dims: int):
        super().__init__()
        self.modes, self.dims = modes, dims
        scale = 1 / (width * width)
        shape = (width, width, modes) if dims == 1 else (2, width, width, modes, modes)
        self.weight = nn.Parameter(scale * torch.randn(*shape, dtype=torch.cfloat))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, width, X[, Y])
        if self.dims == 1:
            f = torch.fft.rfft(h.float(), dim=-1)
            m = min(self.modes, f.shape[-1])
            out = torch.zeros_like(f)
            out[..., :m] = mix_modes(f[..., :m], self.weight[..., :m])
            return torch.fft.irfft(out, n=h.shape[-1], dim=-1).to(h.dtype)
        f = torch.fft.rfft2(h.float(), dim=(-2, -1))
        m1, m2 = min(self.modes, f.shape[-2] // 2), min(self.modes, f.shape[-1])
        # The two corners of kept modes (low and negative x-frequencies) in one call.
        corners = torch.cat([f[..., :m1, :m2], f[..., -m1:, :m2]], dim=-2)
        mixed = mix_modes(corners, torch.cat([self.weight[0, ..., :m1, :m2], self.weight[1, ..., :m1, :m2]], dim=-2))
        out = torch.zeros_like(f)
        out[..., :m1, :m2] = mixed[..., :m1, :]
        out[..., -m1:, :m2] = mixed[..., m1:, :]
        return torch.fft.irfft2(out, s=h.shape[-2:], dim=(-2, -1)).to(h.dtype)


def mix_modes(f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """out[b, o, k] = sum_i f[b, i, k] w[i, o, k] for complex (B, in, *modes) and (in, out, *modes).

    The same products as `einsum("bi…,io…->bo…")`, bit for bit, forward and backward, but laid out
    as one batched matmul over the modes with contiguous operands: torch's CPU einsum hands bmm
    strided complex views, and bmm then loops over the modes one small gemm at a time (a third of
    the ns2d operator's step went there; this is 25-35% faster on that kernel on 2 CPU threads).
    """
    b, _, *modes = f.shape
    lhs = f.flatten(2).permute(2, 0, 1).contiguous()  # (modes, B, in)
    rhs = w.flatten(2).permute(2, 0, 1).contiguous()  # (modes, in, out)
    return torch.bmm(lhs, rhs).permute(1, 2, 0).reshape(b, w.shape[1], *modes)


class FNO(nn.Module):
    """Next frame from the last `frames` frames: (B, frames, X[, Y], C) -> (B, X[, Y], C)."""

    def __init__(self, grid: torch.Tensor, channels: int, frames: int, cfg: FNOConfig):
        super().__init__()
        self.dims = grid.shape[-1]
        self.grid: torch.Tensor
        self.register_buffer("grid", grid.float(), persistent=False)  # (X[, Y], d) in [0, 1)
        self.lift = nn.Linear(frames * channels + self.dims, cfg.width)
        self.spectral = nn.ModuleList(SpectralConv(cfg.width, cfg.modes, self.dims) for _ in range(cfg.depth))
        conv = nn.Conv1d if self.dims == 1 else nn.Conv2d
        self.pointwise = nn.ModuleList(conv(cfg.width, cfg.width, 1) for _ in range(cfg.depth))
        self.project = nn.Sequential(nn.Linear(cfg.width, 128), nn.GELU(), nn.Linear(128, channels))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b, t = u.shape[:2]
        x = u.movedim(1, -2).reshape(*u.shape[:1], *u.shape[2:-1], t * u.shape[-1])  # frames x channels last
        x = torch.cat([x, self.grid.expand(b, *tuple(self.grid.shape))], dim=-1)
        h = self.lift(x).movedim(-1, 1)  # (B, width, X[, Y])
        for i, (spec, point) in enumerate(zip(self.spectral, self.pointwise)):
            h = spec(h) + point(h)
            if i < len(self.spectral) - 1:
                h = nn.functional.gelu(h)
        return self.project(h.movedim(1, -1))

    def rollout(self, given: torch.Tensor, steps: int) -> torch.Tensor:
        """(B, frames, X.., C) given frames -> (B, steps, X.., C), each step fed back."""
        window, out = given, []
        for _ in range(steps):
            nxt = self(window)
            out.append(nxt)
            window = torch.cat([window[:, 1:], nxt[:, None]], dim=1)
        return torch.stack(out, dim=1)


@register("baseline", "fno", config=FNOConfig)
def _fno(cfg: FNOConfig, meta: DataMeta, latent: LatentSpace) -> FNO:
    return FNO(torch.as_tensor(meta.grid), meta.channels, meta.initial_step, cfg)  # on the grid: no latent
