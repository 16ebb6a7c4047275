"""Batched finite-volume solver for PDEBench's Burgers equation, u_t + (u^2/2)_x = (Nu/pi) u_xx.

Periodic x in (0, 1), cell averages at centres (i + 1/2)/N. Scheme (validated in reference
§4.2 and tests/test_burgers.py against exact solutions):
- advection: MUSCL reconstruction with the MC limiter, exact Godunov flux for u^2/2, SSP-RK3;
- diffusion: Strang splitting with the *exact* solution of the semi-discrete heat equation
  (FFT symbol of the 3-point Laplacian). No diffusive CFL, so Nu = 4 costs what Nu = 0.001
  costs, and the k = 0 mode is untouched, so the mean is conserved to rounding.

Time steps: the maximum principle (max|u| never grows, for the PDE and for this scheme)
means max|u| at the start of a save interval bounds it for the rest of the interval. Each
trajectory takes m = ceil(interval * max|u| / (cfl dx)) equal substeps, landing exactly on
every save time. Trajectories are re-sorted by m at each interval so that the ones still
stepping always form a prefix of the batch: no masked work, no wasted substeps.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch

_CHUNK = 128  # rows stepped together: amortises per-op overhead; 64-128 measured fastest (L2-sized buffers)


@contextlib.contextmanager
def _num_threads(n: int | None) -> Iterator[None]:
    """Torch's intra-op threads for the block only: the setting is process-wide, so it is restored."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Stepper:
    """Preallocated buffers for one chunk; every kernel writes into them in place.

    States live in padded rows (2 ghost cells per side) so the stencil never allocates.
    Methods take `n`, the number of leading rows still stepping.
    """

    def __init__(self, b: int, n_cells: int, dtype: torch.dtype) -> None:
        z = lambda *s: torch.zeros(*s, dtype=dtype)
        n = n_cells
        self.n_cells = n
        self.u, self.u1, self.u2, self.swap = z(b, n + 4), z(b, n + 4), z(b, n + 4), z(b, n + 4)
        self.d = z(b, n + 3)
        self.t1, self.t2, self.t3 = z(b, n + 2), z(b, n + 2), z(b, n + 2)
        self.real = z(b, n)
        self.spec = torch.zeros(b, n // 2 + 1, dtype=torch.complex128 if dtype == torch.float64 else torch.complex64)

    def interior(self, p: torch.Tensor, n: int) -> torch.Tensor:
        return p[:n, 2 : self.n_cells + 2]

    def _euler(self, src: torch.Tensor, lam: torch.Tensor, dst: torch.Tensor, n: int) -> None:
        """dst_interior = src_interior - lam * (F_{i+1/2} - F_{i-1/2}), lam = dt / (2 dx)."""
        N = self.n_cells
        p = src[:n]
        p[:, 0:2].copy_(p[:, N : N + 2])  # periodic ghosts
        p[:, N + 2 : N + 4].copy_(p[:, 2:4])
        d, t1, t2, t3 = self.d[:n], self.t1[:n], self.t2[:n], self.t3[:n]
        torch.sub(p[:, 1:], p[:, :-1], out=d)
        a, b = d[:, :-1], d[:, 1:]  # backward / forward differences of padded cells 1..N+2
        # MC limiter as half-slope: h = clamp((a+b)/4, min(max(a,b),0), max(min(a,b),0)),
        # i.e. sign * min(|a|, |b|, |a+b|/4) when a, b agree in sign, else 0.
        torch.minimum(a, b, out=t1).clamp_(min=0)
        torch.maximum(a, b, out=t2).clamp_(max=0)
        torch.add(a, b, out=t3).mul_(0.25)
        torch.clamp(t3, min=t2, max=t1, out=t3)
        # Face states between padded cells c and c+1 (c = 1..N+1), then the Godunov flux of
        # u^2/2 (convex, sonic point 0): F = max(max(uL,0)^2, min(uR,0)^2) / 2.
        ul, ur = t1[:, : N + 1], t2[:, : N + 1]
        torch.add(p[:, 1 : N + 2], t3[:, : N + 1], out=ul).clamp_(min=0).square_()
        torch.sub(p[:, 2 : N + 3], t3[:, 1 : N + 2], out=ur).clamp_(max=0).square_()
        flux = torch.maximum(ul, ur, out=ul)
        df = torch.sub(flux[:, 1:], flux[:, :-1], out=t2[:, :N])
        torch.addcmul(self.interior(p, n), df, lam[:n], value=-1.0, out=self.interior(dst, n))

    def rk3(self, lam: torch.Tensor, n: int) -> None:
        """One SSP-RK3 (Shu-Osher) step of the advective part for the first n rows."""
        u, u1, u2 = self.interior(self.u, n), self.interior(self.u1, n), self.interior(self.u2, n)
        self._euler(self.u, lam, self.u1, n)
        self._euler(self.u1, lam, self.u2, n)
        torch.lerp(u, u2, 0.25, out=u2)  # 3/4 u + 1/4 (u1 + dt L(u1))
        self._euler(self.u2, lam, self.u1, n)
        u.lerp_(u1, 2.0 / 3.0)  # 1/3 u + 2/3 (u2 + dt L(u2))

    def diffuse(self, factor_full: torch.Tensor, factor_half: torch.Tensor, n_full: int, n: int) -> None:
        """Exact heat step: rows [:n_full] get the full factor, rows [n_full:n] the half one."""
        spec, real = self.spec[:n], self.real[:n]
        torch.fft.rfft(self.interior(self.u, n), out=spec)
        spec[:n_full].mul_(factor_full[:n_full])
        spec[n_full:].mul_(factor_half[n_full:n])
        torch.fft.irfft(spec, n=self.n_cells, out=real)
        self.interior(self.u, n).copy_(real)

    def reorder(self, perm: torch.Tensor) -> None:
        torch.index_select(self.u, 0, perm, out=self.swap)
        self.u, self.swap = self.swap, self.u


def _solve_chunk(
    u0: torch.Tensor, nu: torch.Tensor, times: np.ndarray, cfl: float, out: np.ndarray, rows: np.ndarray
) -> None:
    """Step one chunk through all save intervals, writing frames into out[rows]."""
    b, n_cells = u0.shape
    dx = 1.0 / n_cells
    st = _Stepper(b, n_cells, u0.dtype)
    st.interior(st.u, b).copy_(u0)
    k = torch.arange(n_cells // 2 + 1, dtype=torch.float64)
    symbol = (4.0 / dx**2) * torch.sin(math.pi * k / n_cells) ** 2  # -eigenvalues of the 3-point Laplacian
    idx = torch.arange(b)  # position in the chunk -> original row
    for step in range(len(times) - 1):
        interval = float(times[step + 1] - times[step])
        amax = st.interior(st.u, b).abs().amax(dim=1).to(torch.float64)
        m = torch.clamp(torch.ceil(interval * amax / (cfl * dx)), min=1).to(torch.int64)
        perm = torch.argsort(m, descending=True, stable=True)
        if not torch.equal(perm, torch.arange(b)):
            st.reorder(perm)
            idx, nu, m = idx[perm], nu[perm], m[perm]
        dt = interval / m.to(torch.float64)
        lam = (0.5 * dt / dx).to(u0.dtype)[:, None]
        half = torch.exp(-0.5 * (nu * dt)[:, None] * symbol[None, :]).to(st.spec.dtype)
        full = half * half
        # active[j] = how many rows still take substep j (m is sorted descending).
        m_list = m.tolist()
        active = np.searchsorted(-np.asarray(m_list), -np.arange(m_list[0] + 1), side="left")
        st.diffuse(full, half, 0, b)  # opening half step of Strang splitting
        for j in range(m_list[0]):
            n, n_next = int(active[j]), int(active[j + 1])
            st.rk3(lam, n)
            st.diffuse(full, half, n_next, n)  # half step closes the rows that are finishing
        out[rows[idx.numpy()], step + 1] = st.interior(st.u, b).numpy()


def solve(
    u0: np.ndarray | torch.Tensor,
    nu: float | np.ndarray,
    times: np.ndarray,
    *,
    cfl: float = 0.4,
    dtype: torch.dtype = torch.float64,
    threads: int | None = None,
) -> np.ndarray:
    """Evolve cell averages u0 (B, N) with PDEBench viscosity Nu; returns (B, len(times), N).

    `nu` is PDEBench's Nu (the PDE uses Nu/pi), a float or one per trajectory. `times` must
    start at 0 and increase; frame 0 is u0. The result has the compute dtype (float64 by
    default; float32 is ~1.7x faster, conserving the mean to ~1e-7 instead of ~1e-15).
    `threads` sets torch's intra-op threads for this call only. One thread is the safe
    choice on a shared machine: multi-threaded FFTs of a few rows stall when the cores are
    busy, so parallelise over processes (batches) instead.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    u0 = torch.as_tensor(u0).detach().to("cpu", dtype)
    if u0.ndim != 2:
        raise ValueError(f"u0 must be (B, N), got shape {tuple(u0.shape)}")
    b, n_cells = u0.shape
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size < 1 or times[0] != 0.0 or np.any(np.diff(times) <= 0):
        raise ValueError("times must be 1-D, start at 0 and be strictly increasing")
    visc = torch.as_tensor(np.broadcast_to(np.asarray(nu, dtype=np.float64), (b,)).copy()) / math.pi
    if not torch.isfinite(u0).all():
        raise ValueError("u0 contains NaN/Inf")

    out = np.empty((b, times.size, n_cells), dtype=np.float64 if dtype == torch.float64 else np.float32)
    out[:, 0] = u0.numpy()
    # Sorting by max|u0| first puts trajectories with similar step counts in the same chunk.
    order = torch.argsort(u0.abs().amax(dim=1), descending=True).numpy()
    with _num_threads(threads), torch.no_grad():
        for s in range(0, b, _CHUNK):
            rows = order[s : s + _CHUNK]
            sel = torch.from_numpy(rows)
            _solve_chunk(u0[sel].contiguous(), visc[sel], times, cfl, out, rows)
    return out
