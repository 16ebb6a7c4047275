"""Generate PDEBench-layout datasets: 1D Burgers and advection from the PDEBench initial-condition
law, 2D advection of random periodic plane waves (`advection2d`, exact, a 2D smoke PDE), and the
FNO paper's forced 2D Navier–Stokes in vorticity form (`navier_stokes2d`, ups/data/navier_stokes.py).

Each trajectory's initial condition comes from its own RNG stream (seed, index), so a dataset is
the same whatever the chunking, and chunks can be solved in parallel as Ray tasks. The file is
written to a temporary name and renamed at the end: a crash never leaves a half-written file
under the final name.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ups.data import advection, burgers, navier_stokes, pdebench
from ups.data.initial import fourier_field_2d, pdebench_initial_conditions
from ups.schema import GenerateConfig


def grid(cfg: GenerateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (i + 1/2)/N of the unit domain, where PDEBench stores x, and the save times."""
    x = (np.arange(cfg.resolution) + 0.5) / cfg.resolution
    t = np.linspace(0.0, cfg.t_end, cfg.frames)
    return x, t


def initial_conditions(cfg: GenerateConfig, start: int, stop: int) -> np.ndarray:
    """ICs of trajectories [start, stop), each from its own stream (seed, i): chunking never changes them."""
    if cfg.pde == "navier_stokes2d":
        n = cfg.resolution
        draws = [navier_stokes.initial_vorticity(1, n, np.random.default_rng([cfg.seed, i])) for i in range(start, stop)]
        return np.concatenate(draws)
    x, _ = grid(cfg)
    draw = fourier_field_2d if cfg.pde == "advection2d" else pdebench_initial_conditions
    return np.concatenate([draw(1, x, np.random.default_rng([cfg.seed, i])) for i in range(start, stop)])


def solve_chunk(cfg: GenerateConfig, start: int, stop: int) -> np.ndarray:
    """Trajectories [start, stop) as float32 (n, frames, resolution[, resolution])."""
    u0 = initial_conditions(cfg, start, stop)
    _, t = grid(cfg)
    if cfg.pde == "burgers":
        u = burgers.solve(u0, cfg.nu, t, threads=1)  # one thread per chunk (and per Ray task)
    elif cfg.pde == "navier_stokes2d":
        force = navier_stokes.forcing(cfg.resolution)
        u = navier_stokes.solve(u0, cfg.nu, t, dt=cfg.dt, force=force, threads=1)
    elif cfg.pde == "advection2d":
        u = advection.solve_2d(u0, (cfg.beta, cfg.beta_y), t)
    else:
        u = advection.solve(u0, cfg.beta, t)
    return np.asarray(u, dtype=np.float32)


def generate(
    cfg: GenerateConfig, path: str, *, use_ray: bool = False, progress: Callable[[str], None] | None = None
) -> str:
    """Write `cfg.samples` trajectories to `path` and return it; `use_ray` solves chunks as parallel tasks."""
    progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    chunks = [(s, min(s + cfg.chunk_size, cfg.samples)) for s in range(0, cfg.samples, cfg.chunk_size)]
    results: dict[int, np.ndarray] = {}  # chunk index -> solution; Ray tasks finish in any order
    if use_ray and len(chunks) > 1:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        # placement_group=None opts out of capture: inside a sweep trial the tasks would otherwise be
        # captured by the trial's placement group and compete for its few bundles. Ray documents None
        # for "no group" but annotates the parameter as PlacementGroup, hence the ignore.
        no_group = PlacementGroupSchedulingStrategy(placement_group=None)  # type: ignore[arg-type]
        task = ray.remote(num_cpus=1)(solve_chunk).options(scheduling_strategy=no_group)
        pending = {task.remote(cfg, s, e): i for i, (s, e) in enumerate(chunks)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            results[i] = ray.get(done[0])
            progress(
                f"generate: {len(chunks) - len(pending)}/{len(chunks)} chunks ({time.perf_counter() - t_start:.0f}s)"
            )
    else:
        for i, (s, e) in enumerate(chunks):
            results[i] = solve_chunk(cfg, s, e)
            progress(f"generate: {i + 1}/{len(chunks)} chunks ({time.perf_counter() - t_start:.0f}s)")
    x, t = grid(cfg)
    coords = {**{axis: x for axis in "xyz"[: len(cfg.spatial_shape)]}, "t": t}  # the same cells on every axis
    attrs: dict[str, Any] = {"Nu": cfg.nu} if cfg.pde in ("burgers", "navier_stokes2d") else {"beta": cfg.beta}
    if cfg.pde == "advection2d":
        attrs["beta_y"] = cfg.beta_y
    attrs.update({"pde": cfg.pde, "seed": cfg.seed, "generator": "ups-ray"})
    pdebench.write(path, np.concatenate([results[i] for i in range(len(chunks))]), coords, attrs)
    progress(f"generate: wrote {cfg.samples} {cfg.pde} trajectories to {path} in {time.perf_counter() - t_start:.1f}s")
    return path
