"""PDEBench metrics checked against values worked out by hand from the definitions (reference §2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ups.eval.metrics import pdebench_metrics


def _1d_case():
    """B=2, X=4, T=3, C=1. Target = 2 everywhere. Frame 0 carries a huge error (the "input"
    frame), frames 1 and 2 carry e and 2e with
        sample 0: e = [1, -1, 1, -1]  -> RMS 1, sum 0, boundary sqrt((1+1)/2) = 1, max 1
        sample 1: e = [0, 0, 0, 2]    -> RMS 1, sum 2, boundary sqrt((0+4)/2) = sqrt 2, max 2
    """
    e = np.array([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 2.0]])
    target = np.full((2, 4, 3, 1), 2.0)
    err = np.stack([np.full((2, 4), 100.0), e, 2 * e], axis=-1)[..., None]
    return target + err, target


def test_hand_values_1d_with_initial_step():
    pred, target = _1d_case()
    m = pdebench_metrics(pred, target, initial_step=1)
    # frame scale s in {1, 2}; every per-frame value is s times the frame-1 value, averaged over s
    assert m["RMSE"] == pytest.approx(1.5)  # mean_b RMS = 1 * s
    assert m["nRMSE"] == pytest.approx(0.75)  # RMS(target) = 2
    assert m["cRMSE"] == pytest.approx(1.5 * math.sqrt((0 + 4) / 2) / 4)  # sqrt(mean_b (sum e)^2) / X
    assert m["max_err"] == pytest.approx(3.0)  # max 2s
    assert m["bRMSE"] == pytest.approx(1.5 * (1 + math.sqrt(2)) / 2)
    assert set(m) == {"RMSE", "nRMSE", "cRMSE", "bRMSE", "max_err", "fRMSE_low", "fRMSE_mid", "fRMSE_high"}
    assert all(isinstance(v, float) for v in m.values())


def test_initial_step_zero_includes_the_input_frame():
    pred, target = _1d_case()
    m = pdebench_metrics(pred, target)
    assert m["RMSE"] == pytest.approx((100 + 1 + 2) / 3)
    assert m["max_err"] == pytest.approx((100 + 2 + 4) / 3)


def test_per_time_and_torch_inputs():
    pred, target = _1d_case()
    m = pdebench_metrics(torch.tensor(pred, dtype=torch.float32), torch.tensor(target), initial_step=1, per_time=True)
    np.testing.assert_allclose(m["RMSE"], [1.0, 2.0])
    np.testing.assert_allclose(m["nRMSE"], [0.5, 1.0])
    np.testing.assert_allclose(m["max_err"], [2.0, 4.0])
    assert m["cRMSE"].shape == (2,)


def test_channels_are_averaged():
    pred, target = _1d_case()
    # channel 1 is perfect: every error metric halves
    pred2 = np.concatenate([pred, target], axis=-1)
    target2 = np.concatenate([target, target], axis=-1)
    m = pdebench_metrics(pred2, target2, initial_step=1)
    assert m["RMSE"] == pytest.approx(0.75) and m["max_err"] == pytest.approx(1.5)


def test_fourier_bands_1d():
    """err = A cos(2 pi k0 x_j): rfft puts A N / 2 in bin k0 only, so E[k0] = (A/2) Lx."""
    n, a = 32, 0.3
    x = np.arange(n) / n
    target = np.ones((3, n, 2, 1))
    for k0, band in [(2, "low"), (6, "mid"), (14, "high")]:
        pred = target + a * np.cos(2 * np.pi * k0 * x)[None, :, None, None]
        m = pdebench_metrics(pred, target, Lx=2.0)
        n_bins = {"low": 4, "mid": 8, "high": n // 2 + 1 - 12}[band]  # high band includes bin N/2
        assert m[f"fRMSE_{band}"] == pytest.approx(a / 2 * 2.0 / n_bins)
        for other in {"low", "mid", "high"} - {band}:
            assert m[f"fRMSE_{other}"] == pytest.approx(0.0, abs=1e-15)


def test_fourier_high_band_empty_is_nan():
    pred = np.zeros((1, 6, 1, 1))
    m = pdebench_metrics(pred + 1, pred)  # 4 rfft bins: nothing from bin 4 on
    assert math.isnan(m["fRMSE_high"]) and math.isnan(m["fRMSE_mid"])
    assert m["fRMSE_low"] == pytest.approx(6 / 6 / 4)  # constant error 1: bin 0 holds N, /N, mean of 4 bins


def test_fourier_bands_2d_use_first_quadrant_radial_bins():
    """err = cos(2 pi 5 i / 16), constant in j: fftn peaks at (5, 0) and (11, 0), each N^2/2.
    PDEBench bins only i, j < n/2, so just (5, 0) counts: E[5] = (N^2/2) / N^2 = 1/2,
    mid band = mean over bins 4..7 = 1/8, high band (bins 12+ of 8) is empty."""
    i = np.arange(16)
    err = np.cos(2 * np.pi * 5 * i / 16)[:, None] * np.ones((16, 16))
    target = np.zeros((2, 16, 16, 1, 1))
    pred = target + err[None, :, :, None, None]
    m = pdebench_metrics(pred, target)
    assert m["fRMSE_mid"] == pytest.approx(0.125)
    assert m["fRMSE_low"] == pytest.approx(0.0, abs=1e-15)
    assert math.isnan(m["fRMSE_high"])


def test_boundary_rmse_2d_counts_corners_twice():
    """PDEBench sums the x faces and the y faces separately and divides by 2nx + 2ny."""
    target = np.zeros((1, 3, 3, 1, 1))
    corner = target.copy()
    corner[0, 0, 0] = 1.0
    assert pdebench_metrics(corner, target)["bRMSE"] == pytest.approx(math.sqrt(2 / 12))
    centre = target.copy()
    centre[0, 1, 1] = 1.0
    m = pdebench_metrics(centre, target)
    assert m["bRMSE"] == 0.0 and m["RMSE"] == pytest.approx(1 / 3)


def test_boundary_rmse_3d():
    target = np.zeros((1, 3, 3, 3, 1, 1))
    pred = target.copy()
    pred[0, 0, 1, 1] = 2.0  # centre of the x = 0 face: appears in one face only
    m = pdebench_metrics(pred, target)
    assert m["bRMSE"] == pytest.approx(math.sqrt(4 / 54))  # 2(9 + 9 + 9) boundary entries
    assert m["cRMSE"] == pytest.approx(2 / 27)


@pytest.mark.parametrize(
    "a,b",
    [((2, 8, 3, 1), (2, 8, 3, 2)), ((2, 8, 3), (2, 8, 3)), ((1, 2, 2, 2, 2, 2, 1), (1, 2, 2, 2, 2, 2, 1))],
)
def test_bad_shapes_name_both(a, b):
    with pytest.raises(ValueError) as exc:
        pdebench_metrics(np.zeros(a), np.zeros(b))
    assert str(a) in str(exc.value) and str(b) in str(exc.value)


def test_initial_step_must_leave_frames():
    with pytest.raises(ValueError, match="initial_step"):
        pdebench_metrics(np.zeros((1, 4, 3, 1)), np.zeros((1, 4, 3, 1)), initial_step=3)
