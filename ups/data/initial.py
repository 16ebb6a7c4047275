"""PDEBench's random initial conditions (`init_multi`, reference §1.1), in numpy.

JAX's PRNG stream cannot be reproduced here, so this matches the *distribution*, quirks
included, because matching the statistics of the real Burgers/Advection files is the point:
- unselected modes (multiplicity 0) still add a random constant `A_i sin(phi_i)`;
- a mode drawn twice gets a doubled wavenumber, not a doubled amplitude;
- wavenumbers use `x[-1] - x[0]` (= L - dx for cell centres), so the IC is slightly
  non-periodic, exactly as in the files.
"""

from __future__ import annotations

import numpy as np


def pdebench_initial_conditions(
    n: int,
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    k_tot: int = 4,
    num_choise_k: int = 2,
) -> np.ndarray:
    """`n` PDEBench-distributed initial conditions sampled at `x`, shape (n, len(x)), float64."""
    x = np.asarray(x, dtype=np.float64)
    chosen = rng.integers(0, k_tot, size=(n, num_choise_k))
    mult = np.zeros((n, k_tot))
    np.add.at(mult, (np.arange(n)[:, None], chosen), 1.0)  # one_hot(...).sum(axis=1)
    k = 2.0 * np.pi * np.arange(1, k_tot + 1) * mult / (x[-1] - x[0])
    amp = rng.uniform(0.0, 1.0, size=(n, k_tot, 1))
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, k_tot, 1))
    u = np.sum(amp * np.sin(k[:, :, None] * x[None, None, :] + phase), axis=1)

    absolute = rng.random(n) < 0.1
    u[absolute] = np.abs(u[absolute])
    u *= rng.choice(np.array([1.0, -1.0]), size=(n, 1))

    window = rng.random(n) < 0.1
    # PDEBench draws xL ~ U[0.1, 0.45] and xR ~ U[0.55, 0.9] from the *same* PRNG key, so
    # xR = xL + 0.45 in every real file. We keep that (one uniform for both): the window
    # width of the data we imitate is always 0.45. The other key reuses in init_multi only
    # correlate draws of different kinds (amplitudes vs mode choice, abs vs sign); those
    # correlations have no simple closed form, so they are drawn independently here.
    s = rng.uniform(0.0, 1.0, size=n)
    x_left, x_right = 0.1 + 0.35 * s, 0.55 + 0.35 * s
    trans = 0.01
    mask = 0.5 * (np.tanh((x[None, :] - x_left[:, None]) / trans) - np.tanh((x[None, :] - x_right[:, None]) / trans))
    u[window] *= mask[window]
    return u


def fourier_field_2d(n: int, x: np.ndarray, rng: np.random.Generator, *, k_max: int = 4, modes: int = 4) -> np.ndarray:
    """`n` smooth periodic 2D fields on the grid x × x, shape (n, len(x), len(x)), float64.

    Each is a sum of `modes` plane waves A sin(2 pi (kx x + ky y) + phi) with integer wavenumbers
    |kx|, ky <= k_max (not both 0), A ~ U[0, 1], phi ~ U[0, 2 pi): band-limited, so the
    advection solver is exact on it, and truly periodic on the unit square.
    """
    x = np.asarray(x, dtype=np.float64)
    kx = rng.integers(-k_max, k_max + 1, size=(n, modes))
    ky = rng.integers(0, k_max + 1, size=(n, modes))
    zero = (kx == 0) & (ky == 0)
    ky[zero] = 1  # no constant mode: every wave moves
    amp = rng.uniform(0.0, 1.0, size=(n, modes))
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, modes))
    gx, gy = np.meshgrid(x, x, indexing="ij")
    arg = 2.0 * np.pi * (kx[..., None, None] * gx + ky[..., None, None] * gy) + phase[..., None, None]
    return np.sum(amp[..., None, None] * np.sin(arg), axis=1)
