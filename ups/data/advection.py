"""Exact periodic linear advection on the unit domain, in 1D and 2D:
u_t + beta . grad u = 0, so u(x, t) = u0(x - beta t).

Sampled data defines a function only up to interpolation, so we pick the trigonometric
interpolant: shifting it is a Fourier phase factor exp(-2 pi i k . beta t) per mode. This is
exact for any band-limited u0 (every mode below Nyquist), reduces to an exact roll whenever
beta t is a whole number of cells, and — because cell averaging is itself a Fourier
multiplier — is equally exact whether the values are point samples or cell averages. The
Nyquist mode of an even grid keeps only its real part (the usual symmetric convention).
Unlike PDEBench's upwind finite volumes, nothing diffuses.
"""

from __future__ import annotations

import numpy as np
import torch


def solve(u0: np.ndarray | torch.Tensor, beta: float | np.ndarray, times: np.ndarray) -> np.ndarray:
    """Advect u0 (B, N) with speed beta (float or (B,)); returns (B, len(times), N) float64."""
    u0 = np.asarray(u0.detach().cpu().numpy() if isinstance(u0, torch.Tensor) else u0, dtype=np.float64)
    if u0.ndim != 2:
        raise ValueError(f"u0 must be (B, N), got shape {u0.shape}")
    beta = np.broadcast_to(np.asarray(beta, dtype=np.float64), (u0.shape[0],))
    return _shift(u0, beta[:, None], _times(times))


def solve_2d(u0: np.ndarray, beta: tuple[float, float] | np.ndarray, times: np.ndarray) -> np.ndarray:
    """Advect u0 (B, X, Y) with velocity beta = (beta_x, beta_y) (or (B, 2)); returns (B, T, X, Y) float64."""
    u0 = np.asarray(u0, dtype=np.float64)
    if u0.ndim != 3:
        raise ValueError(f"u0 must be (B, X, Y), got shape {u0.shape}")
    velocity = np.broadcast_to(np.asarray(beta, dtype=np.float64), (u0.shape[0], 2))
    return _shift(u0, velocity, _times(times))


def _times(times: np.ndarray) -> np.ndarray:
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1:
        raise ValueError("times must be 1-D")
    return times


def _shift(u0: np.ndarray, velocity: np.ndarray, times: np.ndarray) -> np.ndarray:
    """u0 (B, *space) shifted by velocity (B, d) * t for each t: (B, T, *space)."""
    space = u0.shape[1:]
    axes = tuple(range(1, u0.ndim))
    spec = np.fft.rfftn(u0, axes=axes)
    # Integer wavenumbers per axis (the last axis is the half spectrum of rfftn), broadcast to spec.
    ks = [np.fft.fftfreq(n, 1.0 / n) for n in space[:-1]] + [np.arange(spec.shape[-1])]
    waves = np.meshgrid(*ks, indexing="ij")
    out = np.empty((u0.shape[0], times.size, *space))
    for i, t in enumerate(times):  # one frame at a time keeps memory at O(B N)
        shift = np.mod(velocity * t, 1.0)  # the domain has length 1; mod keeps the phase accurate
        phase = sum(k[None] * shift[:, a].reshape(-1, *([1] * len(space))) for a, k in enumerate(waves))
        out[:, i] = np.fft.irfftn(spec * np.exp(-2j * np.pi * phase), s=space, axes=axes)
    return out
