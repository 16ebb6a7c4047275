"""Exact solutions of periodic viscous Burgers, u_t + u u_x = nu u_xx, as test oracles.

Cole-Hopf (reference §4): u = c - 2 nu d/dx log phi(x - c t, t) with phi solving the heat
equation, c the (conserved) mean. Both routes below give log phi, which yields point values
*and* exact cell averages: avg over [a, b] of u = c - 2 nu (log phi(b) - log phi(a)) / (b - a).
Cell averages are what a finite-volume solver computes; near a shock about one cell wide
(Nu = 0.001) point values would be the wrong thing to compare with.

For PDEBench files pass nu = Nu / pi.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt


class _ColeHopf:
    """Shared Galilean shift and log-phi -> u logic; subclasses provide log phi and w."""

    nu: float
    mean: float
    L: float

    def _log_phi(self, xi: np.ndarray, t: float) -> np.ndarray:
        raise NotImplementedError

    def _w(self, xi: np.ndarray, t: float) -> np.ndarray:
        raise NotImplementedError

    def point_values(self, x: npt.ArrayLike, times: npt.ArrayLike) -> np.ndarray:
        """u(x, t) for every t in `times`: shape (len(times), len(x))."""
        x = np.asarray(x, dtype=np.float64)
        return np.stack([self.mean + self._w(x - self.mean * t, float(t)) for t in np.atleast_1d(times)])

    def cell_averages(self, edges: npt.ArrayLike, times: npt.ArrayLike) -> np.ndarray:
        """Exact averages over the cells [edges[i], edges[i+1]]: shape (len(times), len(edges) - 1)."""
        edges = np.asarray(edges, dtype=np.float64)
        out = []
        for t in np.atleast_1d(times):
            lp = self._log_phi(edges - self.mean * t, float(t))
            out.append(self.mean - 2.0 * self.nu * np.diff(lp) / np.diff(edges))
        return np.stack(out)


class FourierColeHopf(_ColeHopf):
    """Route 1: phi0 = a0 + sum_k a_k cos(k q x) + b_k sin(k q x), q = 2 pi / L.

    Closed form at every t (each mode decays by exp(-nu (k q)^2 t)); exact to rounding. The IC
    family is tied to nu, so it suits moderate nu; use HopfIntegral for shocks at tiny nu.
    """

    def __init__(
        self,
        nu: float,
        a0: float,
        a: Sequence[float] | np.ndarray = (),
        b: Sequence[float] | np.ndarray = (),
        mean: float = 0.0,
        L: float = 1.0,
    ) -> None:
        self.nu, self.a0, self.mean, self.L = float(nu), float(a0), float(mean), float(L)
        k = max(len(a), len(b))
        self.a = np.zeros(k)
        self.b = np.zeros(k)
        self.a[: len(a)] = a
        self.b[: len(b)] = b
        if self.a0 <= np.hypot(self.a, self.b).sum():
            raise ValueError("a0 must exceed sum_k sqrt(a_k^2 + b_k^2) so phi stays positive")
        self.q = 2.0 * np.pi / self.L * np.arange(1, k + 1)

    def _terms(self, xi: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        decay = np.exp(-self.nu * self.q**2 * t)
        arg = xi[:, None] * self.q[None, :]
        c, s = np.cos(arg), np.sin(arg)
        phi = self.a0 + (decay * (self.a * c + self.b * s)).sum(axis=1)
        dphi = (decay * self.q * (self.b * c - self.a * s)).sum(axis=1)
        return phi, dphi

    def _log_phi(self, xi: np.ndarray, t: float) -> np.ndarray:
        return np.log(self._terms(xi, t)[0])

    def _w(self, xi: np.ndarray, t: float) -> np.ndarray:
        phi, dphi = self._terms(xi, t)
        return -2.0 * self.nu * dphi / phi

    def u0(self, x: npt.ArrayLike) -> np.ndarray:
        """The initial condition, e.g. to build a HopfIntegral of the same solution."""
        return self.point_values(x, [0.0])[0]


class HopfIntegral(_ColeHopf):
    """Route 2: any smooth periodic u0, via the Hopf integral in log-sum-exp form.

    log phi(x, t) = log int exp(-G / 2nu) dy + const, G = (x - y)^2 / 2t + Phi(y), Phi' = u0 - c.
    The integrand is analytic and Gaussian-like, so the trapezoid rule on a uniform grid
    converges geometrically (reference §4). Phi comes from u0's Fourier series (sampled at
    `n_fourier` points), so u0 should be resolved by that many modes.
    """

    def __init__(
        self, u0: Callable[[np.ndarray], np.ndarray], nu: float, L: float = 1.0, n_fourier: int = 4096
    ) -> None:
        self.nu, self.L = float(nu), float(L)
        y = np.arange(n_fourier) * (L / n_fourier)
        uh = np.fft.rfft(np.asarray(u0(y), dtype=np.float64)) / n_fourier
        self.mean = float(uh[0].real)
        kq = 2.0 * np.pi / L * np.arange(uh.size)
        self._uh = uh.copy()
        self._uh[0] = 0.0
        if n_fourier % 2 == 0:
            self._uh[-1] = 0.0  # the Nyquist bin has no well-defined sine part; u0 must not need it
        self._phih = np.zeros_like(uh)
        self._phih[1:] = self._uh[1:] / (1j * kq[1:])  # antiderivative of the zero-mean part
        self._kq = kq
        # A fine Phi table; each t uses a power-of-two subsample of it as quadrature nodes.
        self._m_fine = 8 * n_fourier
        self._phi_fine = self._series(self._phih, self._m_fine)
        du = self._series(1j * kq * self._uh, self._m_fine)
        self._max_du = max(float(du.max()), 0.0)
        self._dphi_range = float(self._phi_fine.max() - self._phi_fine.min())

    def _series(self, coef: np.ndarray, m: int) -> np.ndarray:
        """Trig polynomial with rfft-normalised coefficients, sampled at m uniform points."""
        full = np.zeros(m // 2 + 1, dtype=complex)
        n = min(coef.size, full.size)
        full[:n] = coef[:n]
        return np.fft.irfft(full * m, n=m)

    def _phi_at(self, xi: np.ndarray) -> np.ndarray:
        arg = xi[:, None] * self._kq[None, 1:]
        return 2.0 * (np.exp(1j * arg) * self._phih[None, 1:]).real.sum(axis=1)

    def _weights(
        self, xi: np.ndarray, t: float, chunk: int = 2_000_000
    ) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray, float]]:
        """Yield (rows, y - x, log-weights, min G, h) blocks of the trapezoid sums at points xi.

        Nodes are a global uniform grid y_j = j h (Phi is periodic, so Phi(y_j) = table[j mod m]);
        h is the coarsest power-of-two subsample of the fine table meeting the reference's
        spacing rule, and each row keeps only |y - x| <= width, beyond which weights < e^-60.
        """
        nu = self.nu
        h_need = 0.25 * np.sqrt(2.0 * nu / (1.0 / t + self._max_du))
        stride = 1
        while 2 * stride * self.L / self._m_fine <= h_need and 2 * stride <= self._m_fine // 64:
            stride *= 2
        m = self._m_fine // stride
        h = self.L / m
        phi = self._phi_fine[::stride]
        width = np.sqrt(2.0 * t * (self._dphi_range + 120.0 * nu))
        k = int(np.ceil(2.0 * width / h)) + 2
        rows = max(1, chunk // k)
        for s in range(0, xi.size, rows):
            x = xi[s : s + rows]
            j = np.floor((x - width) / h).astype(np.int64)[:, None] + np.arange(k)[None, :]
            dy = j * h - x[:, None]
            g = dy**2 / (2.0 * t) + phi[j % m]
            gmin = g.min(axis=1)
            yield slice(s, s + rows), dy, -(g - gmin[:, None]) / (2.0 * nu), gmin, h

    def _log_phi(self, xi: np.ndarray, t: float) -> np.ndarray:
        if t == 0.0:
            return -self._phi_at(xi) / (2.0 * self.nu)
        out = np.empty_like(xi)
        for rows, _, logw, gmin, h in self._weights(xi, t):
            out[rows] = -gmin / (2.0 * self.nu) + np.log(np.exp(logw).sum(axis=1) * h)
        return out - 0.5 * np.log(4.0 * np.pi * self.nu * t)

    def _w(self, xi: np.ndarray, t: float) -> np.ndarray:
        if t == 0.0:
            return 2.0 * (self._uh[None, 1:] * np.exp(1j * xi[:, None] * self._kq[None, 1:])).real.sum(axis=1)
        out = np.empty_like(xi)
        for rows, dy, logw, _, _ in self._weights(xi, t):
            w = np.exp(logw)
            out[rows] = (-dy / t * w).sum(axis=1) / w.sum(axis=1)
        return out
