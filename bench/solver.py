"""Throughput of the batched Burgers solver in PDEBench's hardest setting.

Nu = 0.001, 1024 cells, 201 frames on t in [0, 2], PDEBench-distributed initial conditions.
Prints ONE JSON line: trajectories/s and the extrapolated minutes for 1000 trajectories per
(dtype, threads) configuration, plus a hostname-free description of the machine. The load
average is recorded because the 2-core dev box is often shared, which skews timings.

    .venv/bin/python bench/solver.py [--batch 128] [--threads 1 2] [--dtypes float64 float32]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from _common import emit

from ups.data import burgers
from ups.data.initial import pdebench_initial_conditions

N_CELLS, N_FRAMES, T_END, NU = 1024, 201, 2.0, 0.001


def run(batch: int, dtype: str, threads: int, seed: int = 0) -> dict:
    x = (np.arange(N_CELLS) + 0.5) / N_CELLS
    u0 = pdebench_initial_conditions(batch, x, np.random.default_rng(seed))
    times = np.linspace(0.0, T_END, N_FRAMES)
    start = time.perf_counter()
    u = burgers.solve(u0, NU, times, dtype=getattr(torch, dtype), threads=threads)
    seconds = time.perf_counter() - start
    assert np.isfinite(u).all()
    return {
        "dtype": dtype,
        "threads": threads,
        "batch": batch,
        "seconds": round(seconds, 2),
        "traj_per_s": round(batch / seconds, 2),
        "minutes_per_1000": round(1000 / (batch / seconds) / 60, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    results = [run(args.batch, d, t) for d in args.dtypes for t in args.threads]
    emit(
        "burgers_solver",
        {"results": results},
        setting={"Nu": NU, "cells": N_CELLS, "frames": N_FRAMES, "t_end": T_END, "ic": "pdebench init_multi"},
        loadavg_1min_before=round(load_before, 2),
    )


if __name__ == "__main__":
    main()
