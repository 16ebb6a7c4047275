"""2D end to end without Ray: the exact 2D advection solver against the closed form, the
generator's PDEBench 2D file, and the tiny 2D recipe (its data.path a file:// URI) trained
through every stage with decoded 2D rollout metrics and plots (the same trainer and evaluation
the Ray path runs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ups import pipeline
from ups.backend.local_backend import LocalBackend
from ups.config import load_config
from ups.data import advection, pdebench
from ups.data.generate import generate, initial_conditions
from ups.stages import registry

ROOT = Path(__file__).resolve().parents[1]
TINY2D = ROOT / "tests" / "configs" / "tiny2d.yaml"


def cell_centres(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) / n


def test_2d_advection_matches_the_closed_form():
    n = 32
    gx, gy = np.meshgrid(cell_centres(n), cell_centres(n), indexing="ij")
    waves = [
        lambda x, y: np.sin(2 * np.pi * (3 * x + y)) + 0.5 * np.cos(2 * np.pi * (-2 * x + 5 * y)),
        lambda x, y: np.cos(2 * np.pi * 7 * y) * np.sin(2 * np.pi * 2 * x),
    ]
    velocity, times = np.array([[1.0, 0.5], [-0.3, 1.7]]), np.array([0.0, 0.013, 0.4, 1.0])
    u = advection.solve_2d(np.stack([w(gx, gy) for w in waves]), velocity, times)
    for b, w in enumerate(waves):
        want = np.stack([w(gx - velocity[b, 0] * t, gy - velocity[b, 1] * t) for t in times])
        np.testing.assert_allclose(u[b], want, rtol=0, atol=1e-12)


def test_a_whole_cell_2d_shift_is_a_roll():
    u0 = np.random.default_rng(3).normal(size=(2, 16, 16))  # not band-limited: still exact
    u = advection.solve_2d(u0, (1.0, 0.5), np.array([2 / 16, 0.5]))  # (2, 1) and (8, 4) cells
    np.testing.assert_allclose(u[:, 0], np.roll(u0, (2, 1), axis=(1, 2)), atol=1e-12)
    np.testing.assert_allclose(u[:, 1], np.roll(u0, (8, 4), axis=(1, 2)), atol=1e-12)


def test_the_2d_generator_writes_pdebench_2d_advection_that_reads_back_exactly(tmp_path):
    gen = load_config(TINY2D).cfg.data.generate
    assert gen is not None and gen.pde == "advection2d"
    one, split = tmp_path / "one.h5", tmp_path / "split.h5"
    generate(gen, str(one), progress=lambda _: None)
    generate(gen.model_copy(update={"chunk_size": 7}), str(split), progress=lambda _: None)
    info = pdebench.inspect(one)
    assert (info.layout, info.n_samples, info.n_times, info.spatial_shape) == ("tensor", 40, 8, (16, 16))
    u, coords = pdebench.read(one)
    assert u.shape == (40, 8, 16, 16, 1) and set(coords) == {"x", "y", "t"}
    np.testing.assert_array_equal(u, pdebench.read(split)[0])  # chunking never changes a trajectory
    np.testing.assert_allclose(coords["y"], cell_centres(16), atol=1e-7)
    u0 = initial_conditions(gen, 0, 40)
    want = advection.solve_2d(u0, (gen.beta, gen.beta_y), coords["t"])
    np.testing.assert_allclose(u[..., 0], want, atol=1e-5)  # float32 on disk
    assert not np.allclose(u[:, -1], u[:, 0])  # the waves move


@pytest.fixture(scope="module")
def tiny2d_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("data2d") / "tiny_advection2d.h5"
    loaded = load_config(TINY2D, [f"data.path={data.as_uri()}", "eval.plots=true"])  # a file:// URI
    storage = tmp_path_factory.mktemp("runs2d")
    opts = pipeline.PipelineOptions(name="tiny2d", storage=str(storage), quiet=True, backend=LocalBackend("cpu"))
    return loaded, storage / "tiny2d", pipeline.run(loaded, opts)


def test_the_tiny_2d_recipe_trains_every_stage_and_reports_decoded_2d_metrics(tiny2d_run):
    loaded, run, summary = tiny2d_run
    trained = [n for n in registry.names() if getattr(loaded.cfg.stages, n).epochs > 0]
    assert set(trained) >= {"autoencoder", "operator", "diffusion_residual", "consistency_distill", "fno_baseline"}
    for name in trained:
        rec = summary.stages[name]
        assert rec.status == "completed" and rec.epochs == getattr(loaded.cfg.stages, name).epochs
        assert rec.best is not None and np.isfinite(rec.best.value)
    for split, ev in (("val", summary.eval), ("test", summary.eval_test)):
        assert ev is not None and ev.split == split
        for metric in ("nRMSE", "RMSE", "cRMSE", "bRMSE", "max_err", "fRMSE_low", "fRMSE_mid"):
            assert np.isfinite(ev.scores[metric]) and np.isfinite(ev.scores[f"persistence_{metric}"])
        # PDEBench's high band is |k| >= 12: a 16 x 16 grid has radii up to 7 only, so it is empty.
        assert np.isnan(ev.scores["fRMSE_high"])
        assert len(ev.horizon_nRMSE["model"]) == ev.horizon == 8 - loaded.cfg.data.initial_step
        assert json.loads((run / "eval" / split / "metrics.json").read_text())["nRMSE"] == ev.nRMSE
        for png in ("fields.png", "horizon.png"):
            assert (run / "eval" / split / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
