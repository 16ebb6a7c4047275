"""The 2D Navier–Stokes generator (ups/data/navier_stokes.py): exact decay of a single Fourier shell,
second order in time on forced random data, the FNO paper's initial-condition law, and a
PDEBench 2D file that chunking never changes."""

from __future__ import annotations

import math

import numpy as np

from ups.data import navier_stokes as ns
from ups.data import pdebench
from ups.data.generate import generate, initial_conditions
from ups.schema import GenerateConfig


def _centres(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) / n


def test_an_unforced_single_shell_decays_exactly():
    # Taylor–Green vortex: ψ ∝ w on one shell |k|² = 2, so u·∇w = 0 exactly and only diffusion acts.
    n, nu, dt = 32, 0.01, 0.05
    x = _centres(n)
    w0 = (2 * np.sin(2 * math.pi * x)[:, None] * np.sin(2 * math.pi * x)[None, :])[None]
    times = np.array([0.0, 0.5, 1.0])
    w = ns.solve(w0, nu, times, dt=dt, force=None)
    lam = nu * 4 * math.pi**2 * 2  # ν (2π)² |k|²
    a = 0.5 * dt * lam
    for j, t in enumerate(times):
        steps = round(t / dt)
        np.testing.assert_allclose(w[0, j], w0[0] * ((1 - a) / (1 + a)) ** steps, atol=1e-11)  # the scheme
        np.testing.assert_allclose(w[0, j], w0[0] * math.exp(-lam * t), rtol=0, atol=2e-4)  # the PDE, O(dt²)


def test_second_order_in_time_on_forced_random_data():
    n, nu = 32, 1e-3
    w0 = ns.initial_vorticity(2, n, np.random.default_rng(3))
    f = ns.forcing(n)
    times = np.array([0.0, 2.0])
    w = {dt: ns.solve(w0, nu, times, dt=dt, force=f)[:, -1] for dt in (0.04, 0.02, 0.01)}
    coarse = np.linalg.norm(w[0.04] - w[0.02])
    fine = np.linalg.norm(w[0.02] - w[0.01])
    assert 3.0 < coarse / fine < 5.5, coarse / fine  # 4 for a second-order scheme
    assert fine / np.linalg.norm(w[0.01]) < 1e-3


def test_initial_vorticity_follows_the_fno_papers_field():
    n = 64
    w = ns.initial_vorticity(64, n, np.random.default_rng(0))
    assert w.shape == (64, n, n)
    np.testing.assert_allclose(w.mean(axis=(1, 2)), 0.0, atol=1e-10)  # no mean mode on the torus
    power = (np.abs(np.fft.fft2(w)) ** 2).mean(0)
    k = np.fft.fftfreq(n, d=1.0 / n)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    low, high = power[(k2 >= 1) & (k2 <= 2)].mean(), power[(k2 >= 64) & (k2 <= 72)].mean()
    want = ((4 * math.pi**2 * 1.5 + 49) / (4 * math.pi**2 * 68 + 49)) ** -2.5  # (−Δ + 49)^{−2.5}
    assert 0.6 < (low / high) / want < 1.6
    assert 0.1 < w.std() < 1.0  # the paper's scale: |k| = 1 modes of amplitude ~0.1


def test_the_forcing_is_the_papers():
    n = 16
    x = _centres(n)
    f = ns.forcing(n)
    assert abs(f[3, 5] - 0.1 * (math.sin(2 * math.pi * (x[3] + x[5])) + math.cos(2 * math.pi * (x[3] + x[5])))) < 1e-15


def test_the_generator_writes_a_pdebench_2d_file_that_chunking_never_changes(tmp_path):
    gen = GenerateConfig(
        pde="navier_stokes2d", nu=1e-3, samples=6, resolution=16, frames=5, t_end=2.0, dt=0.05, seed=7, chunk_size=6
    )
    one, split = tmp_path / "one.h5", tmp_path / "split.h5"
    generate(gen, str(one), progress=lambda _: None)
    generate(gen.model_copy(update={"chunk_size": 4}), str(split), progress=lambda _: None)
    info = pdebench.inspect(one)
    assert (info.layout, info.n_samples, info.n_times, info.spatial_shape) == ("tensor", 6, 5, (16, 16))
    u, coords = pdebench.read(one)
    np.testing.assert_array_equal(u, pdebench.read(split)[0])  # each trajectory from its own stream
    np.testing.assert_allclose(coords["t"], np.linspace(0, 2, 5), atol=1e-7)
    np.testing.assert_allclose(u[:, 0, ..., 0], initial_conditions(gen, 0, 6), atol=1e-5)
    assert not np.allclose(u[:, -1], u[:, 0], atol=1e-2)  # the flow evolves


def test_which_symmetries_the_forced_flow_keeps():
    # The forcing depends on x + y only: a shift along (1, -1) leaves it unchanged and commutes with
    # the solver exactly; a shift along x alone, or a 90-degree rotation, moves the forcing and does not.
    n, nu = 32, 1e-3
    w0 = ns.initial_vorticity(1, n, np.random.default_rng(5))
    f = ns.forcing(n)
    times = np.array([0.0, 2.0])
    w = ns.solve(w0, nu, times, dt=0.05, force=f)[:, -1]

    def after(start: np.ndarray) -> np.ndarray:
        return ns.solve(start, nu, times, dt=0.05, force=f)[:, -1]

    anti = after(np.roll(w0, (3, -3), axis=(1, 2)))
    np.testing.assert_allclose(anti, np.roll(w, (3, -3), axis=(1, 2)), atol=1e-10)
    along_x = after(np.roll(w0, 3, axis=1))
    assert np.abs(along_x - np.roll(w, 3, axis=1)).max() > 1e-3
    rotated = after(np.rot90(w0, axes=(1, 2)))
    assert np.abs(rotated - np.rot90(w, axes=(1, 2))).max() > 1e-3
