"""2D incompressible Navier–Stokes in vorticity form on the unit torus, as in the FNO paper
(Li et al. 2021, §5.3):

    w_t + u·∇w = ν Δw + f,   u = ∇⊥ψ = (ψ_y, −ψ_x),   −Δψ = w,   x ∈ (0, 1)²

with the forcing f(x, y) = 0.1 (sin 2π(x + y) + cos 2π(x + y)) and initial vorticity drawn from the
Gaussian random field N(0, 7^{3/2} (−Δ + 49 I)^{−2.5}) (mean zero on the torus).

Scheme: pseudo-spectral on an n × n grid. The nonlinear term u·∇w is formed in physical space from
spectral derivatives and dealiased by the 2/3 rule; diffusion is Crank–Nicolson (implicit, so ν
never limits the step); the advection and forcing are Heun's method (explicit second order). The
whole scheme is second order in time: the step-halving test in tests/test_navier_stokes.py checks
that the error falls ~4× per halving, and an unforced single Fourier shell (Taylor–Green-like, the
nonlinear term vanishes exactly) decays by the Crank–Nicolson factor to rounding.

Grid points are cell centres (i + 1/2)/n like the other generators, so the forcing is sampled there.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ups.data.burgers import _num_threads


def wavenumbers(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer wavenumbers (kx, ky) for a real FFT of an n × n field: shapes (n, 1) and (1, n//2 + 1)."""
    kx = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64).reshape(n, 1)
    ky = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64).reshape(1, n // 2 + 1)
    return kx, ky


def initial_vorticity(count: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """`count` fields from the FNO paper's GRF: spectral amplitude 7^{3/2}·(4π²|k|² + 49)^{−5/4}, mean 0.

    Drawn as complex Gaussian coefficients on the full spectrum and made real by taking the real
    part of the inverse FFT, which keeps the spectrum's shape (it halves the variance per mode
    symmetrically). Sized in the field's own units like the paper's `GaussianRF(2, s, alpha=2.5, tau=7)`.
    """
    k = np.fft.fftfreq(n, d=1.0 / n)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    sqrt_eig = (n**2) * math.sqrt(2.0) * 7.0**1.5 * (4 * math.pi**2 * k2 + 49.0) ** (-1.25)
    sqrt_eig[0, 0] = 0.0
    xi = rng.standard_normal((count, n, n)) + 1j * rng.standard_normal((count, n, n))
    return np.fft.ifft2(sqrt_eig * xi, axes=(-2, -1)).real


def forcing(n: int) -> np.ndarray:
    """The FNO paper's forcing 0.1 (sin 2π(x + y) + cos 2π(x + y)) at the cell centres, (n, n)."""
    x = (np.arange(n) + 0.5) / n
    s = x[:, None] + x[None, :]
    return 0.1 * (np.sin(2 * math.pi * s) + np.cos(2 * math.pi * s))


class VorticitySolver:
    """Steps a batch of vorticity fields (b, n, n) in spectral space with a fixed dt."""

    def __init__(self, n: int, nu: float, dt: float, force: np.ndarray | None) -> None:
        kx, ky = wavenumbers(n)
        self.n, self.dt = n, dt
        two_pi = 2 * math.pi
        self.dx = 1j * two_pi * kx  # ∂/∂x symbol
        self.dy = 1j * two_pi * ky
        lap = -(two_pi**2) * (kx**2 + ky**2)  # Δ symbol
        inv_lap = torch.where(lap == 0, torch.zeros_like(lap), 1.0 / torch.where(lap == 0, 1.0, lap))
        self.psi_of_w = -inv_lap  # −Δψ = w  →  ψ̂ = −ŵ / lap
        cut = n / 3.0  # 2/3 rule: keep |k| < n/3 on each axis
        self.dealias = ((kx.abs() < cut) & (ky.abs() < cut)).to(torch.float64)
        self.cn_lhs = 1.0 - 0.5 * dt * nu * lap
        self.cn_rhs = 1.0 + 0.5 * dt * nu * lap
        self.f_hat = torch.fft.rfft2(torch.from_numpy(force)) if force is not None else None

    def nonlinear(self, w_hat: torch.Tensor) -> torch.Tensor:
        """−u·∇w + f in spectral space, dealiased."""
        n = self.n
        psi = self.psi_of_w * w_hat
        u = torch.fft.irfft2(self.dy * psi, s=(n, n))  # u = ψ_y
        v = torch.fft.irfft2(-self.dx * psi, s=(n, n))  # v = −ψ_x
        wx = torch.fft.irfft2(self.dx * w_hat, s=(n, n))
        wy = torch.fft.irfft2(self.dy * w_hat, s=(n, n))
        out = -torch.fft.rfft2(u * wx + v * wy) * self.dealias
        if self.f_hat is not None:
            out = out + self.f_hat
        return out

    def step(self, w_hat: torch.Tensor) -> torch.Tensor:
        """One Heun (advection, forcing) + Crank–Nicolson (diffusion) step."""
        n0 = self.nonlinear(w_hat)
        pred = (self.cn_rhs * w_hat + self.dt * n0) / self.cn_lhs
        n1 = self.nonlinear(pred)
        return (self.cn_rhs * w_hat + 0.5 * self.dt * (n0 + n1)) / self.cn_lhs


def solve(
    w0: np.ndarray,
    nu: float,
    times: np.ndarray,
    *,
    dt: float = 1e-2,
    force: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Vorticity at `times` (times[0] is w0's time) for a batch w0 (b, n, n): float64 (b, len(times), n, n).

    Each save interval is split into the fewest equal steps no longer than `dt`, so every save
    time is hit exactly whatever dt is.
    """
    w0 = np.ascontiguousarray(w0, dtype=np.float64)
    b, n, _ = w0.shape
    out = np.empty((b, len(times), n, n))
    out[:, 0] = w0
    with _num_threads(threads):
        w_hat = torch.fft.rfft2(torch.from_numpy(w0))
        solvers: dict[tuple[int, float], VorticitySolver] = {}  # one per distinct (steps, interval)
        for j in range(1, len(times)):
            interval = float(times[j] - times[j - 1])
            steps = max(1, math.ceil(interval / dt - 1e-9))
            key = (steps, round(interval, 12))
            if key not in solvers:
                solvers[key] = VorticitySolver(n, nu, interval / steps, force)
            solver = solvers[key]
            for _ in range(steps):
                w_hat = solver.step(w_hat)
            out[:, j] = torch.fft.irfft2(w_hat, s=(n, n)).numpy()
    return out
