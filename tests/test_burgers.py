"""Burgers/advection solvers and the PDEBench IC sampler, against exact solutions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ups.data import advection, burgers
from ups.data.exact import FourierColeHopf, HopfIntegral
from ups.data.initial import pdebench_initial_conditions


def sines(x):
    """PDEBench-like IC (two modes, non-zero mean); steepens into shocks by t ~ 0.07."""
    return 0.2 + 0.8 * np.sin(2 * np.pi * x + 0.3) + 0.5 * np.sin(6 * np.pi * x + 1.1)


def edges(n):
    return np.linspace(0.0, 1.0, n + 1)


def rel_l2(u, ref):
    return np.linalg.norm(u - ref, axis=-1) / np.linalg.norm(ref, axis=-1)


# Small problems are dominated by per-op overhead, and multi-threaded FFTs on tiny batches
# stall badly when other processes share the 2 cores, so solver tests pin one thread.


@pytest.fixture(scope="module")
def hopf_0001():
    return HopfIntegral(sines, 0.001 / math.pi)


# --- the oracle itself ---------------------------------------------------------------------


def test_exact_routes_agree():
    """Closed-form Cole-Hopf and the Hopf integral are independent computations of one solution."""
    r1 = FourierColeHopf(0.01, 1.0, a=(0.6, 0.2), b=(0.3, 0.0), mean=0.3)
    r2 = HopfIntegral(r1.u0, 0.01)
    assert r2.mean == pytest.approx(0.3, abs=1e-14)
    e, xc = edges(512), (np.arange(512) + 0.5) / 512
    times = [0.0, 0.05, 0.5, 2.0]
    np.testing.assert_allclose(r2.cell_averages(e, times), r1.cell_averages(e, times), rtol=0, atol=1e-11)
    np.testing.assert_allclose(r2.point_values(xc, times), r1.point_values(xc, times), rtol=0, atol=1e-11)


def test_exact_solution_satisfies_the_pde():
    """4th-order finite-difference residual of u_t + u u_x - nu u_xx, including the mean shift."""
    nu, n, t, dt = 0.01, 2048, 0.3, 1e-3
    sol = FourierColeHopf(nu, 1.0, a=(0.9,), mean=0.25)
    x = np.arange(n) / n
    u_m2, u_m1, u, u_p1, u_p2 = sol.point_values(x, t + dt * np.arange(-2, 3))
    u_t = (u_m2 - 8 * u_m1 + 8 * u_p1 - u_p2) / (12 * dt)
    h = 1.0 / n
    r = lambda k: np.roll(u, -k)  # noqa: E731
    u_x = (r(-2) - 8 * r(-1) + 8 * r(1) - r(2)) / (12 * h)
    u_xx = (-r(-2) + 16 * r(-1) - 30 * u + 16 * r(1) - r(2)) / (12 * h * h)
    residual = u_t + u * u_x - nu * u_xx
    assert np.abs(residual).max() < 1e-6 * np.abs(nu * u_xx).max()


# --- Burgers finite volumes ----------------------------------------------------------------


def test_matches_exact_at_nu_0001_pdebench_resolution(hopf_0001):
    """The hard PDEBench case: Nu = 0.001 (shocks ~ one cell wide), N = 1024, t in [0, 2],
    on PDEBench's training time grid (every 5th saved frame)."""
    times = np.round(np.arange(41) * 0.05, 12)
    exact = hopf_0001.cell_averages(edges(1024), times)
    u = burgers.solve(exact[:1], 0.001, times, threads=1)[0]
    err = rel_l2(u, exact)
    assert err.max() <= 3e-3, err
    assert err[1] < 1e-4  # before the shocks form the scheme is close to exact
    assert np.abs(u.mean(axis=1) - exact[0].mean()).max() < 1e-12  # conservation
    assert np.abs(u).max(axis=1).max() <= np.abs(u[0]).max() + 1e-12  # maximum principle


def test_matches_exact_at_nu_001():
    r = HopfIntegral(sines, 0.01 / math.pi)
    times = np.round(np.arange(21) * 0.1, 12)
    exact = r.cell_averages(edges(1024), times)
    u = burgers.solve(exact[:1], 0.01, times, threads=1)[0]
    assert rel_l2(u, exact).max() <= 3e-4
    assert np.abs(u.mean(axis=1) - exact[0].mean()).max() < 1e-12


def test_second_order_convergence():
    sol = FourierColeHopf(0.01, 1.0, a=(0.9,), mean=0.1)  # steep smooth front, Nu = 0.01 pi
    times = np.array([0.0, 0.25, 0.5])
    errs = []
    for n in (128, 256, 512):
        exact = sol.cell_averages(edges(n), times)
        u = burgers.solve(exact[:1], 0.01 * math.pi, times, threads=1)[0]
        errs.append(np.abs(u[1:] - exact[1:]).max())
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert (ratios > 3.5).all(), (errs, ratios)


def test_large_nu_needs_no_diffusive_step_limit():
    """Nu = 4: an explicit scheme would need ~1e5 steps here; the exact heat step needs few."""
    sol = FourierColeHopf(4.0 / math.pi, 1.0, a=(0.5,), b=(0.2,))
    times = np.array([0.0, 0.002, 0.01])
    exact = sol.cell_averages(edges(256), times)
    u = burgers.solve(exact[:1], 4.0, times, threads=1)[0]
    assert rel_l2(u[1:], exact[1:]).max() < 1e-4


def test_batch_is_independent_of_order_chunking_and_neighbours(monkeypatch):
    """Sorting, re-sorting and chunking must not mix trajectories up: solving a batch equals
    solving each trajectory alone. Row 0 starts as the second fastest but its Nu = 4 kills it
    within the first interval, so the step-count order changes between save times."""
    x = (np.arange(128) + 0.5) / 128
    params = [(1.0, 0.0, 0.0), (0.5, 0.3, 0.1), (0.1, 0.6, -0.05), (2.0, 0.1, 0.0)]
    u0 = np.stack([a * np.sin(2 * np.pi * (x + s)) + c for a, s, c in params])
    nu = np.array([4.0, 0.001, 0.01, 0.1])
    times = np.array([0.0, 0.05, 0.2, 0.3])
    monkeypatch.setattr(burgers, "_CHUNK", 3)
    together = burgers.solve(u0, nu, times, threads=1)
    assert np.abs(together[0, 1]).max() < np.abs(together[2, 1]).max()  # the order did change
    for i in range(4):
        alone = burgers.solve(u0[i : i + 1], nu[i], times, threads=1)
        np.testing.assert_allclose(together[i], alone[0], rtol=0, atol=1e-13)


def test_pdebench_initial_conditions_stay_bounded_and_conservative():
    x = (np.arange(256) + 0.5) / 256
    u0 = pdebench_initial_conditions(16, x, np.random.default_rng(3))
    times = np.arange(11) * 0.05
    u = burgers.solve(torch.from_numpy(u0), 0.001, times, threads=1)
    assert u.shape == (16, 11, 256) and u.dtype == np.float64
    np.testing.assert_array_equal(u[:, 0], u0)
    assert np.abs(u.mean(axis=2) - u0.mean(axis=1, keepdims=True)).max() < 1e-12
    assert (np.abs(u).max(axis=2) <= np.abs(u0).max(axis=1, keepdims=True) + 1e-12).all()


def test_float32_agrees_with_float64():
    x = (np.arange(256) + 0.5) / 256
    u0 = pdebench_initial_conditions(4, x, np.random.default_rng(4))
    times = np.arange(6) * 0.1
    u64 = burgers.solve(u0, 0.01, times, threads=1)
    u32 = burgers.solve(u0, 0.01, times, dtype=torch.float32, threads=1)
    assert u32.dtype == np.float32
    assert rel_l2(u32, u64).max() < 1e-4


@pytest.mark.parametrize("times", [[0.1, 0.2], [0.0, 0.2, 0.1], [[0.0, 0.1]]])
def test_rejects_bad_times(times):
    with pytest.raises(ValueError, match="times"):
        burgers.solve(np.zeros((1, 8)), 0.01, np.array(times))


# --- exact advection -----------------------------------------------------------------------


def test_advection_is_exact_for_band_limited_data():
    n = 64
    x = (np.arange(n) + 0.5) / n
    u0 = np.stack([np.sin(2 * np.pi * 3 * x) + 0.5 * np.cos(2 * np.pi * 7 * x), np.cos(2 * np.pi * x)])
    beta, times = np.array([0.4, -1.3]), np.array([0.0, 0.013, 0.5, 2.0])
    u = advection.solve(u0, beta, times)
    exact = [lambda y: np.sin(6 * np.pi * y) + 0.5 * np.cos(14 * np.pi * y), lambda y: np.cos(2 * np.pi * y)]
    for b, fn in enumerate(exact):
        want = np.stack([fn(x - beta[b] * t) for t in times])
        np.testing.assert_allclose(u[b], want, rtol=0, atol=1e-12)


def test_advection_whole_cell_shift_is_a_roll():
    u0 = np.random.default_rng(5).normal(size=(2, 32))  # not band-limited: still exact
    u = advection.solve(u0, 1.0, np.array([3 / 32, 0.5]))
    np.testing.assert_allclose(u[:, 0], np.roll(u0, 3, axis=1), atol=1e-13)
    np.testing.assert_allclose(u[:, 1], np.roll(u0, 16, axis=1), atol=1e-13)


# --- PDEBench initial conditions -----------------------------------------------------------


def test_initial_conditions_distribution():
    x = (np.arange(1024) + 0.5) / 1024
    u = pdebench_initial_conditions(2000, x, np.random.default_rng(7))
    assert u.shape == (2000, 1024) and u.dtype == np.float64
    np.testing.assert_array_equal(u, pdebench_initial_conditions(2000, x, np.random.default_rng(7)))
    assert np.abs(u).max() <= 4.0  # at most k_tot unit-amplitude sines
    # windowed samples (~10 %) vanish near both ends: xL >= 0.1, xR <= 0.9, ramp width 0.01
    windowed = (np.abs(u[:, :20]).max(axis=1) < 1e-12) & (np.abs(u[:, -20:]).max(axis=1) < 1e-12)
    assert 140 <= windowed.sum() <= 260
    # PDEBench's key reuse makes xR - xL = 0.45 always; the half-height points of the
    # window are where |u| leaves ~0, so every windowed support has the same width.
    support = np.abs(u[windowed]) > 1e-6 * np.abs(u[windowed]).max(axis=1, keepdims=True)
    first, last = support.argmax(axis=1), 1023 - support[:, ::-1].argmax(axis=1)
    width = (last - first) / 1024
    assert np.ptp(width) < 0.06 and 0.5 < width.mean() < 0.7
    # unselected modes add random constant offsets: many samples have a clearly non-zero mean
    assert (np.abs(u[~windowed].mean(axis=1)) > 0.1).mean() > 0.3
