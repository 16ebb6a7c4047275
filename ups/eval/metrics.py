"""PDEBench's evaluation metrics (`metric_func`, reference §2), in float64 numpy.

Same definitions and reductions as PDEBench HEAD, so numbers are comparable with published
tables: the first `initial_step` frames (copied from the ground truth during rollout) are
dropped, every error is computed per (sample, channel, time), batch-reduced, then averaged
over channels and time. Deliberate differences, all no-ops for the usual single-channel
case: 3-D bRMSE is per channel (PDEBench folds channels together there), and only Lx scales
fRMSE (PDEBench also multiplies by Ly, Lz, which default to 1).
"""

from __future__ import annotations

import math
from typing import Literal, overload

import numpy as np
import torch

KEYS = ("RMSE", "nRMSE", "cRMSE", "bRMSE", "max_err", "fRMSE_low", "fRMSE_mid", "fRMSE_high")
I_LOW, I_HIGH = 4, 12


def _f64(a: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _boundary_rmse(err: np.ndarray) -> np.ndarray:
    """Per (b, c, t) RMS of the error over all boundary faces; err is (B, C, T, *space)."""
    space = err.shape[3:]
    sq = err**2
    total = np.zeros(err.shape[:3])
    count = 0
    for axis in range(len(space)):
        for end in (0, -1):
            face = np.take(sq, end, axis=3 + axis)
            total += face.reshape(*err.shape[:3], -1).sum(axis=-1)
            count += face[0, 0, 0].size
    return np.sqrt(total / count)


def _fourier_bands(err: np.ndarray, Lx: float) -> np.ndarray:
    """(C, 3, T) band errors; err is (B, C, T, *space). The FFT is linear, so F(p) - F(y) = F(p - y)."""
    space = err.shape[3:]
    n_points = math.prod(space)
    if len(space) == 1:
        power = np.mean(np.abs(np.fft.rfft(err, axis=-1)) ** 2, axis=0)  # (C, T, K)
    else:
        # PDEBench bins |k| = floor(sqrt(i^2 + j^2 [+ l^2])) over the non-negative quadrant
        # i < n/2 of the full FFT only, summing power within a bin.
        f = np.abs(np.fft.fftn(err, axes=tuple(range(3, err.ndim)))) ** 2
        half = tuple(n // 2 for n in space)
        quadrant = (slice(None),) * 3 + tuple(slice(0, h) for h in half)  # all of (B, C, T); i < n/2 per axis
        f = f[quadrant].reshape(*err.shape[:3], -1)
        squares = np.meshgrid(*(np.arange(h) ** 2 for h in half), indexing="ij")
        radius = np.floor(np.sqrt(sum(squares))).astype(int).ravel()
        n_bins = min(half)  # radii >= n_bins are dropped; no bin below is empty (i = r, j = 0)
        order = np.argsort(radius, kind="stable")
        order = order[radius[order] < n_bins]
        starts = np.searchsorted(radius[order], np.arange(n_bins))
        binned = np.add.reduceat(f[..., order], starts, axis=-1)  # (B, C, T, n_bins)
        power = binned.mean(axis=0)
    spectrum = np.sqrt(power) / n_points * Lx  # (C, T, K)
    bands = [spectrum[..., :I_LOW], spectrum[..., I_LOW:I_HIGH], spectrum[..., I_HIGH:]]
    return np.stack([b.mean(axis=-1) if b.shape[-1] else np.full(b.shape[:2], np.nan) for b in bands], axis=1)


# Overloads on per_time: callers get floats or per-frame arrays without narrowing the union.
@overload
def pdebench_metrics(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    initial_step: int = 0,
    *,
    Lx: float = 1.0,
    per_time: Literal[False] = False,
) -> dict[str, float]: ...


@overload
def pdebench_metrics(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    initial_step: int = 0,
    *,
    Lx: float = 1.0,
    per_time: Literal[True],
) -> dict[str, np.ndarray]: ...


@overload
def pdebench_metrics(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    initial_step: int = 0,
    *,
    Lx: float = 1.0,
    per_time: bool,
) -> dict[str, float] | dict[str, np.ndarray]: ...


def pdebench_metrics(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    initial_step: int = 0,
    *,
    Lx: float = 1.0,
    per_time: bool = False,
) -> dict[str, float] | dict[str, np.ndarray]:
    """PDEBench metrics for (B, X[, Y, Z], T, C) arrays, frames >= initial_step only.

    Returns floats (averaged over channels and time), or with per_time=True 1-D arrays over
    the kept frames (averaged over channels only). A high band that is empty (fewer than 12
    Fourier bins) is NaN, as in PDEBench.
    """
    p, y = _f64(pred), _f64(target)
    if p.shape != y.shape or p.ndim not in (4, 5, 6):
        raise ValueError(
            f"pred {p.shape} and target {y.shape} must have the same shape (B, X[, Y, Z], T, C), rank 4 to 6"
        )
    if not 0 <= initial_step < p.shape[-2]:
        raise ValueError(f"initial_step={initial_step} leaves no frames of the {p.shape[-2]} in pred {p.shape}")
    # (B, *space, T, C) -> (B, C, T, *space)
    order = (0, p.ndim - 1, p.ndim - 2, *range(1, p.ndim - 2))
    p = p[..., initial_step:, :].transpose(order)
    y = y[..., initial_step:, :].transpose(order)
    b, c, t = p.shape[:3]
    err = p - y
    flat_err, flat_y = err.reshape(b, c, t, -1), y.reshape(b, c, t, -1)
    n_points = flat_err.shape[-1]

    rms = np.sqrt(np.mean(flat_err**2, axis=-1))  # (B, C, T)
    with np.errstate(divide="ignore", invalid="ignore"):
        nrmse = rms / np.sqrt(np.mean(flat_y**2, axis=-1))
    values = {
        "RMSE": rms.mean(axis=0),
        "nRMSE": nrmse.mean(axis=0),
        "cRMSE": np.sqrt(np.mean(flat_err.sum(axis=-1) ** 2, axis=0)) / n_points,
        "bRMSE": _boundary_rmse(err).mean(axis=0),
        "max_err": np.abs(flat_err).max(axis=(0, 3)),
    }
    bands = _fourier_bands(err, Lx)
    values.update(fRMSE_low=bands[:, 0], fRMSE_mid=bands[:, 1], fRMSE_high=bands[:, 2])
    if per_time:
        return {k: values[k].mean(axis=0) for k in KEYS}
    return {k: float(values[k].mean()) for k in KEYS}
