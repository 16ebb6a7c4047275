"""Speed-up of a trained surrogate over the solver that made its data, at the accuracy each reaches.

The run's test split is rolled out from each trajectory's first `frames_in` frames to the file's
end by
- the surrogate (`Surrogate.rollout`, corrector included, in eval.batch_size batches);
- the FNO baseline, if the run trained one (its export verified against summary.json's digest);
- the numerical solver that generated the file (ups/data/burgers.py, advection.py or
  navier_stokes.py; the PDE and
  its parameters from the run's `data.generate`, else the file's attributes), re-solving the same
  trajectories from the same state (the last input frame, at the file's own resolution) to the same
  save times; and, in 1-D, the same solver on coarser grids (cell averages over 2, 4, ... cells,
  interpolated back), to find the cheapest solve as accurate as the surrogate.

Every method gets the same torch threads (`--threads`) and is timed on the whole split, best of
`--repeats`, after a warm-up; model loading and file reads are not timed. Accuracy is PDEBench's
nRMSE of the predicted frames against the file, on the model's (strided) grid.
Prints ONE JSON line.

    .venv/bin/python bench/speedup.py --run runs/NAME [--fno-run runs/FNO] [--max-samples N] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import emit

from ups import Surrogate
from ups.data import advection, burgers, navier_stokes, pdebench, views
from ups.eval.evaluate import build_baseline
from ups.eval.metrics import pdebench_metrics
from ups.train.state import from_bytes, tensors_sha256


def nrmse(pred: np.ndarray, truth: np.ndarray, lx: float) -> float:
    """PDEBench nRMSE of (B, T, X.., C) predicted frames (evaluation's metric)."""
    return float(pdebench_metrics(np.moveaxis(pred, 1, -2), np.moveaxis(truth, 1, -2), 0, Lx=lx)["nRMSE"])


def timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[np.ndarray, float]:
    """The result and the best wall time of `repeats` calls."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    assert out is not None
    return out, best


def solver_of(cfg: Any, attrs: dict[str, Any]) -> dict[str, Any]:
    """The PDE and parameters that generated the file."""
    gen = cfg.data.generate
    if gen is not None:
        return {"pde": gen.pde, "nu": gen.nu, "beta": gen.beta, "beta_y": gen.beta_y, "dt": gen.dt}
    if attrs.get("pde") in ("burgers", "advection", "advection2d"):
        return {"pde": attrs["pde"], "nu": attrs.get("Nu"), "beta": attrs.get("beta"), "beta_y": attrs.get("beta_y")}
    if "Nu" in attrs:  # PDEBench's own Burgers files
        return {"pde": "burgers", "nu": float(attrs["Nu"]), "beta": None, "beta_y": None}
    raise SystemExit("the run has no data.generate and the file no 'pde'/'Nu' attribute: which solver made it?")


def solve(spec: dict[str, Any], u0: np.ndarray, times: np.ndarray, threads: int) -> np.ndarray:
    """(B, X[, Y]) start states -> (B, len(times), X[, Y]) with the generating solver."""
    if spec["pde"] == "burgers":
        return burgers.solve(u0, spec["nu"], times, threads=threads)
    if spec["pde"] == "navier_stokes2d":
        n = u0.shape[-1]
        force = navier_stokes.forcing(n)
        return navier_stokes.solve(u0, spec["nu"], times, dt=spec["dt"], force=force, threads=threads)
    if spec["pde"] == "advection2d":
        return advection.solve_2d(u0, (spec["beta"], spec["beta_y"]), times)
    return advection.solve(u0, spec["beta"], times)


def to_cells(u: np.ndarray, n: int) -> np.ndarray:
    """Periodic linear interpolation of cell-centred (..., m) values to n cell centres."""
    m = u.shape[-1]
    p = (np.arange(n) + 0.5) * m / n - 0.5
    j = np.floor(p).astype(int)
    w = p - j
    return u[..., j % m] * (1 - w) + u[..., (j + 1) % m] * w


def fno_export(run: Path) -> dict[str, Any] | None:
    summary = json.loads((run / "summary.json").read_text())
    rec = summary.get("stages", {}).get("fno_baseline") or {}
    if rec.get("status") != "completed":
        return None
    tensors = from_bytes((run / "stages" / "fno_baseline" / "export.pt").read_bytes())["tensors"]
    if tensors_sha256(tensors) != rec.get("weights_sha256"):
        raise SystemExit(f"{run}/stages/fno_baseline/export.pt does not match its recorded digest")
    return tensors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a run folder (the surrogate, its data and its FNO baseline)")
    ap.add_argument("--fno-run", help="the run whose FNO baseline to time (default: --run); e.g. an FNO "
                    "trained alone on the same data and split (`train --only fno_baseline`)")  # fmt: skip
    ap.add_argument("--max-samples", type=int, help="trajectories of the file the split is cut from "
                    "(default: the run's data.max_samples); the test split is its first test_fraction")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every method (1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--coarsest", type=int, default=16, help="fewest cells of the coarse solver ladder (16)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run).resolve()

    s = Surrogate.load(run, device="cpu")
    cfg, meta, d = s.cfg, s.data, s.cfg.data
    path = d.paths[0]
    info = pdebench.inspect(path)
    n = min(info.n_samples, args.max_samples or d.max_samples or info.n_samples)
    rows = views.split_indices(n, d.test_fraction, d.val_fraction)["test"]  # the file's first rows
    b, k, ts, xs = len(rows), s.meta.frames_in, d.t_stride, d.x_stride
    frames = meta.frames
    steps = frames - k
    truth, _ = pdebench.read(path, samples=slice(0, b), t=slice(None, None, ts), space=slice(None, None, xs))
    truth = truth[:, :frames]
    lx = meta.lengths[0]
    want = truth[:, k:]
    u0 = truth[:, :k]
    results: dict[str, dict[str, Any]] = {}

    def record(name: str, pred: np.ndarray, seconds: float, **extra: Any) -> None:
        results[name] = {"seconds": round(seconds, 4), "traj_per_s": round(b / seconds, 3),
                         "nRMSE": nrmse(pred, want, lx), **extra}  # fmt: skip

    s.rollout(u0[:1], 1)  # warm-up: first-call allocations
    pred, sec = timed(lambda: s.rollout(u0, steps), args.repeats)
    record("surrogate", pred, sec, corrector=s.meta.corrector)

    fno_run = Path(args.fno_run).resolve() if args.fno_run else run
    tensors = fno_export(fno_run)
    if tensors is not None:
        fno = build_baseline(cfg, meta, {"fno_baseline": tensors}, "cpu")
        assert fno is not None
        norm = meta.normalizers[0]
        window = torch.from_numpy(norm.normalize(u0).astype(np.float32))

        @torch.no_grad()
        def fno_rollout() -> np.ndarray:
            parts = [fno.rollout(w, steps) for w in window.split(cfg.eval.batch_size)]
            return norm.denormalize(torch.cat(parts).numpy())

        fno_rollout()
        pred, sec = timed(fno_rollout, args.repeats)
        record("fno", pred, sec)

    spec = solver_of(cfg, info.attrs)
    _, raw = pdebench.read(path, samples=slice(0, 0))
    i0 = (k - 1) * ts
    times = raw["t"][i0 : (frames - 1) * ts + 1 : ts] - raw["t"][i0]
    start, _ = pdebench.read(path, samples=slice(0, b), t=slice(i0, i0 + 1))
    native = start[:, 0, ..., 0].astype(np.float64)  # the file's own grid, one channel
    cells = native.shape[-1]
    ladder = [1] if spec["pde"] in ("advection2d", "navier_stokes2d") else [f for f in (1, 2, 4, 8, 16, 32, 64)
                                                       if cells % f == 0 and cells // f >= args.coarsest]  # fmt: skip
    solver = []
    for f in ladder:
        coarse = native.reshape(b, cells // f, f).mean(-1) if f > 1 else native
        solve(spec, coarse[:1], times[:2], args.threads)  # warm-up
        out, sec = timed(lambda c=coarse: solve(spec, c, times, args.threads), args.repeats)
        out = out[:, 1:]
        if f > 1:
            out = to_cells(out, cells)
        strided = out[(slice(None), slice(None), *([slice(None, None, xs)] * (out.ndim - 2)))][..., None]
        solver.append({"cells": cells // f, "seconds": round(sec, 4), "traj_per_s": round(b / sec, 3),
                       "nRMSE": nrmse(strided.astype(np.float32), want, lx)})  # fmt: skip
    results["solver"] = solver[0]

    def speedup(name: str) -> dict[str, Any]:
        m = results[name]
        as_good = [e for e in solver if e["nRMSE"] <= m["nRMSE"]]
        cheapest = min(as_good, key=lambda e: e["seconds"]) if as_good else None
        return {
            "vs_solver": round(solver[0]["seconds"] / m["seconds"], 2),
            # the cheapest solve at least as accurate; null when none of the ladder is (then vs_solver stands)
            "vs_solver_at_accuracy": round(cheapest["seconds"] / m["seconds"], 2) if cheapest else None,
            "solver_cells_at_accuracy": cheapest["cells"] if cheapest else None,
        }

    emit(
        "speedup",
        {"methods": results, "solver_ladder": solver,
         "speedup": {name: speedup(name) for name in results if name != "solver"}},
        setting={"run": str(run), "fno_run": str(fno_run), "batch": cfg.eval.batch_size, "data": path,
                 **spec, "trajectories": b, "frames_in": k, "steps": steps,
                 "grid": list(s.meta.grid), "native_cells": cells, "x_stride": xs, "t_stride": ts,
                 "threads": args.threads, "repeats": args.repeats},
    )  # fmt: skip


if __name__ == "__main__":
    main()
