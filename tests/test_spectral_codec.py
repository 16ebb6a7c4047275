"""The fixed Fourier codec (ups/models/spectral_codec.py): exact on band-limited fields, a
projection on others, its latent.dim checked before anything runs, and a 2D pipeline on it
without Ray (the autoencoder stage has nothing to train and exports it as built)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ups import pipeline
from ups.backend.local_backend import LocalBackend
from ups.config import ModelConfig, load_config
from ups.models import factory
from ups.models.spectral_codec import FourierDecoder, FourierEncoder, resample
from ups.schema import LatentConfig

ROOT = Path(__file__).resolve().parents[1]
TINY2D = ROOT / "tests" / "configs" / "tiny2d.yaml"


def _grid(n: int, d: int) -> torch.Tensor:
    x = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.stack(torch.meshgrid(*([x] * d), indexing="ij"), -1)


def test_a_band_limited_field_survives_encode_and_decode_exactly():
    n, p = 32, 4
    g = _grid(n, 2)
    x, y = g[..., 0], g[..., 1]
    u = torch.sin(2 * math.pi * x) + 0.3 * torch.cos(2 * math.pi * (3 * x - 2 * y)) + 0.1 * torch.sin(6 * math.pi * y)
    u = u[None, ..., None].float()  # modes up to |k| = 3 < 8 / 2: all kept on the 8 x 8 latent grid
    enc, dec = FourierEncoder((n, n), p), FourierDecoder(g.float(), p)
    z = enc(u)
    assert z.shape == (1, 64, 1)
    torch.testing.assert_close(dec.field(z), u, atol=1e-5, rtol=0)
    # The latent is the field's band-limited samples on the coarse grid, so coding it again changes nothing.
    torch.testing.assert_close(enc(dec.field(z)), z, atol=1e-5, rtol=0)


def test_decode_after_encode_is_a_projection_and_1d_works():
    torch.manual_seed(0)
    u = torch.randn(3, 64, 2)
    g = _grid(64, 1).float()
    enc, dec = FourierEncoder((64,), 8), FourierDecoder(g, 8)
    once = dec.field(enc(u))
    torch.testing.assert_close(dec.field(enc(once)), once, atol=1e-5, rtol=0)
    assert not torch.allclose(once, u, atol=1e-2)  # white noise loses its high modes
    assert enc(u).shape == (3, 8, 2)


def test_resample_keeps_the_modes_both_grids_hold():
    h = torch.randn(2, 1, 12, 10, dtype=torch.float64)
    up = resample(h, (24, 20))
    down = resample(up, (12, 10))
    torch.testing.assert_close(resample(down, (12, 10)), down)
    assert torch.fft.rfftn(down, dim=(2, 3)).abs()[..., 6, :].max() < 1e-9  # the Nyquist row is dropped


def test_the_fourier_codec_needs_latent_dim_equal_to_the_channels():
    model = ModelConfig.model_validate({"encoder": {"arch": "fourier"}, "decoder": {"arch": "fourier"}})
    ok = factory.shape_errors(model, LatentConfig(tokens=16, dim=1), (16, 16), channels=1)
    assert ok == []
    bad = factory.shape_errors(model, LatentConfig(tokens=16, dim=4), (16, 16), channels=1)
    assert [k for k, _ in bad] == ["latent.dim", "latent.dim"] and "must be 1" in bad[0][1]


@pytest.fixture(scope="module")
def fourier_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("data2d") / "tiny_advection2d.h5"
    codec = ["latent.dim=1", "model.encoder.arch=fourier", "model.decoder.arch=fourier"]
    off = ["stages.diffusion_residual.epochs=0", "stages.consistency_distill.epochs=0", "eval.plots=false"]
    sets = [f"data.path={data}", *codec, *off]
    loaded = load_config(TINY2D, sets)
    storage = tmp_path_factory.mktemp("runs_fourier")
    opts = pipeline.PipelineOptions(name="fourier", storage=str(storage), quiet=True, backend=LocalBackend("cpu"))
    return pipeline.run(loaded, opts)


def test_a_2d_pipeline_runs_on_the_fourier_codec_with_nothing_to_train_in_the_autoencoder(fourier_run):
    ae = fourier_run.stages["autoencoder"]
    assert ae.status == "completed" and ae.epochs == 0 and ae.best is not None
    assert np.isfinite(ae.best.value)
    assert fourier_run.stages["operator"].epochs == 3
    ev = fourier_run.eval
    assert ev is not None and np.isfinite(ev.scores["nRMSE"])
    assert ev.scores["recon_nRMSE"] < 1.0  # a 4 x 4 grid keeps |k| <= 1 of these plane waves: better than zero
