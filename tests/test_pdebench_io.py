"""PDEBench HDF5 reading/writing: round trips, the three layouts, selective reads, bad files."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from ups.data import pdebench
from ups.data.pdebench import PDEBenchFormatError


def _tensor_file(path, u, x, t, extra=None):
    with h5py.File(path, "w") as f:
        f["tensor"] = u
        f["x-coordinate"] = x
        f["t-coordinate"] = t
        for k, v in (extra or {}).items():
            f[k] = v
    return str(path)


@pytest.fixture
def burgers_like(tmp_path):
    rng = np.random.default_rng(0)
    u = rng.normal(size=(6, 11, 32)).astype(np.float32)
    x = (np.arange(32) + 0.5) / 32
    t = np.arange(11) * 0.01
    path = tmp_path / "burgers.h5"
    pdebench.write(path, u, {"x": x, "t": t}, attrs={"Nu": 0.001})
    return path, u, x, t


# --- write -> read -------------------------------------------------------------------------


def test_round_trip_appends_extra_time_and_keeps_attrs(burgers_like):
    path, u, x, t = burgers_like
    got, coords = pdebench.read(path)
    assert got.dtype == np.float32 and got.shape == (6, 11, 32, 1)
    np.testing.assert_array_equal(got[..., 0], u)
    np.testing.assert_array_equal(coords["x"], x.astype(np.float32).astype(np.float64))
    # the file holds T+1 times; read trims back to the T frames
    np.testing.assert_allclose(coords["t"], t, rtol=0, atol=1e-7)
    with h5py.File(path) as f:
        np.testing.assert_allclose(f["t-coordinate"][()], np.arange(12) * 0.01, atol=1e-7)
    info = pdebench.inspect(path)
    assert info.layout == "tensor" and info.channels == ("u",)
    assert (info.n_samples, info.n_times, info.spatial_shape) == (6, 11, (32,))
    assert info.attrs == {"Nu": pytest.approx(0.001)} and isinstance(info.attrs["Nu"], float)


def test_written_file_matches_fnodatasetsingle_structure(burgers_like):
    path, *_ = burgers_like
    with h5py.File(path) as f:
        assert set(f.keys()) == {"tensor", "x-coordinate", "t-coordinate"}
        for name, shape in [("tensor", (6, 11, 32)), ("x-coordinate", (32,)), ("t-coordinate", (12,))]:
            assert f[name].dtype == np.float32 and f[name].shape == shape
            assert f[name].chunks is None and f[name].compression is None


def test_write_accepts_channel_axis_and_full_time_coordinate(tmp_path):
    u = np.ones((2, 3, 8, 1))
    t = np.array([0.0, 0.5, 1.0, 1.5])  # already T+1 entries: kept as is
    pdebench.write(tmp_path / "a.h5", u, {"x": np.arange(8.0), "t": t})
    with h5py.File(tmp_path / "a.h5") as f:
        assert f["tensor"].shape == (2, 3, 8)
        np.testing.assert_array_equal(f["t-coordinate"][()], t)


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 8, 2), (2, 3, 8, 8, 1)])
def test_write_rejects_other_shapes(tmp_path, shape):
    with pytest.raises(ValueError, match="shape"):
        pdebench.write(tmp_path / "a.h5", np.zeros(shape), {"x": np.arange(8.0), "t": np.arange(3.0)})


def test_write_takes_2d_fields_with_a_y_coordinate(tmp_path):
    u = np.arange(2 * 3 * 8 * 4, dtype=np.float64).reshape(2, 3, 8, 4, 1)
    pdebench.write(tmp_path / "a.h5", u, {"x": np.arange(8.0), "y": np.arange(4.0), "t": np.arange(3.0)})
    back, coords = pdebench.read(tmp_path / "a.h5")
    np.testing.assert_array_equal(back, u.astype(np.float32))
    assert coords["y"].shape == (4,) and pdebench.inspect(tmp_path / "a.h5").spatial_shape == (8, 4)
    with pytest.raises(ValueError, match="coords\\['y'\\] has shape"):
        pdebench.write(tmp_path / "b.h5", u, {"x": np.arange(8.0), "y": np.arange(5.0), "t": np.arange(3.0)})


def test_write_refuses_what_read_would_reject(tmp_path):
    u = np.zeros((1, 2, 4))
    u[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pdebench.write(tmp_path / "a.h5", u, {"x": np.arange(4.0), "t": np.arange(2.0)})
    assert not (tmp_path / "a.h5").exists()


def test_write_is_atomic(tmp_path, monkeypatch):
    final = tmp_path / "data.h5"
    pdebench.write(final, np.zeros((1, 2, 4)), {"x": np.arange(4.0), "t": np.arange(2.0)})
    before = final.read_bytes()

    real = h5py.Group.create_dataset

    def crash(self, name, *a, **k):
        if name == "t-coordinate":
            raise RuntimeError("disk full")
        return real(self, name, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        pdebench.write(final, np.ones((1, 2, 4)), {"x": np.arange(4.0), "t": np.arange(2.0)})
    assert final.read_bytes() == before  # the old file survives untouched
    assert sorted(os.listdir(tmp_path)) == ["data.h5"]  # and no temporary is left behind


# --- selective reads -----------------------------------------------------------------------


def test_strided_read_returns_exact_slices(burgers_like):
    path, u, x, t = burgers_like
    got, coords = pdebench.read(path, samples=slice(1, 5, 2), t=slice(None, None, 5), space=slice(None, None, 4))
    np.testing.assert_array_equal(got[..., 0], u[1:5:2, ::5, ::4])
    np.testing.assert_array_equal(coords["x"], x.astype(np.float32)[::4])
    np.testing.assert_allclose(coords["t"], t[::5], atol=1e-7)
    assert got.shape == (2, 3, 8, 1) and coords["t"].shape == (3,)


def test_read_asks_hdf5_only_for_the_hyperslab(burgers_like, monkeypatch):
    path, u, *_ = burgers_like
    seen = []
    real = h5py.Dataset.__getitem__

    def spy(self, key):
        seen.append((self.name, key))
        return real(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    pdebench.read(path, samples=slice(2, 4), t=slice(0, 5), space=slice(None, None, 2))
    tensor_keys = [k for name, k in seen if name == "/tensor"]
    assert tensor_keys == [(slice(2, 4), slice(0, 5), slice(None, None, 2))]


def test_inspect_reads_no_field_data(burgers_like, monkeypatch):
    """inspect reads the (small) coordinates to check them, never the fields."""
    path, *_ = burgers_like
    real = h5py.Dataset.__getitem__

    def refuse(self, key):
        if "coordinate" not in self.name:
            raise AssertionError(f"inspect read {self.name}")
        return real(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", refuse)
    monkeypatch.setattr(h5py.Dataset, "read_direct", refuse)
    assert pdebench.inspect(path).n_samples == 6


def test_nan_outside_the_selection_is_not_an_error(tmp_path):
    u = np.zeros((4, 3, 8), np.float32)
    u[3, 0, 0] = np.nan
    path = _tensor_file(tmp_path / "a.h5", u, np.arange(8.0), np.arange(4.0))
    got, _ = pdebench.read(path, samples=slice(0, 3))
    assert got.shape == (3, 3, 8, 1)
    with pytest.raises(PDEBenchFormatError, match="NaN"):
        pdebench.read(path)


# --- other layouts -------------------------------------------------------------------------


def test_variables_layout_2d(tmp_path):
    rng = np.random.default_rng(1)
    shape = (3, 4, 6, 5)  # N, T, X, Y
    data = {k: rng.normal(size=shape).astype(np.float32) for k in ("Vx", "density", "pressure")}
    path = tmp_path / "cfd.h5"
    with h5py.File(path, "w") as f:
        for k, v in data.items():  # written out of canonical order on purpose
            f[k] = v
        f["x-coordinate"] = np.linspace(-1, 1, 6)
        f["y-coordinate"] = np.linspace(0, 1, 5)
        f["t-coordinate"] = np.linspace(0, 1, 5)
        f.attrs["eta"] = 0.1
        f.attrs["note"] = b"bytes attr"
    info = pdebench.inspect(path)
    assert info.layout == "variables" and info.channels == ("density", "pressure", "Vx")
    assert info.spatial_shape == (6, 5) and info.attrs == {"eta": 0.1, "note": "bytes attr"}
    got, coords = pdebench.read(path, samples=slice(1, 3), space=(slice(None, None, 2), slice(1, None)))
    want = np.stack([data[k][1:3, :, ::2, 1:] for k in ("density", "pressure", "Vx")], axis=-1)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(coords["x"], np.linspace(-1, 1, 6)[::2])
    np.testing.assert_array_equal(coords["y"], np.linspace(0, 1, 5)[1:])
    np.testing.assert_array_equal(coords["t"], np.linspace(0, 1, 5)[:4])


def test_tensor_layout_3d(tmp_path):
    u = np.arange(2 * 3 * 4 * 5 * 6, dtype=np.float32).reshape(2, 3, 4, 5, 6)
    path = tmp_path / "3d.h5"
    with h5py.File(path, "w") as f:
        f["tensor"] = u
        for k, n in (("x", 4), ("y", 5), ("z", 6)):
            f[f"{k}-coordinate"] = np.arange(n) / n
        f["t-coordinate"] = np.arange(3.0)  # T entries (no extra) is also accepted
    got, coords = pdebench.read(path, t=slice(1, None))
    np.testing.assert_array_equal(got[..., 0], u[:, 1:])
    assert sorted(coords) == ["t", "x", "y", "z"] and coords["t"].tolist() == [1.0, 2.0]


def _per_seed_file(path, n=5, t=4, nx=6, ny=3, c=2, seed=2):
    rng = np.random.default_rng(seed)
    datas = []
    with h5py.File(path, "w") as f:
        for i in range(n):
            g = f.create_group(f"{i:04d}")
            d = rng.normal(size=(t, nx, ny, c)).astype(np.float32)
            g.create_dataset("data", data=d, compression="lzf")
            g["grid/x"] = np.linspace(-1, 1, nx)
            g["grid/y"] = np.linspace(-2, 2, ny)
            g["grid/t"] = np.linspace(0, 5, t)
            datas.append(d)
    return path, np.stack(datas)


def test_per_seed_layout_reads_only_selected_groups(tmp_path, monkeypatch):
    path, data = _per_seed_file(tmp_path / "rd.h5")
    info = pdebench.inspect(path)
    assert info.layout == "per_seed" and info.channels == ("c0", "c1")
    assert (info.n_samples, info.n_times, info.spatial_shape) == (5, 4, (6, 3))

    seen = set()
    real = h5py.Dataset.__getitem__

    def spy(self, key):
        if self.name.endswith("/data"):
            seen.add(self.name)
        return real(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    got, coords = pdebench.read(path, samples=slice(1, 4, 2), t=slice(None, None, 2), space=slice(None, None, 2))
    np.testing.assert_array_equal(got, data[1:4:2, ::2, ::2, ::2])
    assert seen == {"/0001/data", "/0003/data"}
    np.testing.assert_array_equal(coords["x"], np.linspace(-1, 1, 6)[::2])
    np.testing.assert_array_equal(coords["y"], np.linspace(-2, 2, 3)[::2])
    np.testing.assert_array_equal(coords["t"], np.linspace(0, 5, 4)[::2])


# --- bad files -----------------------------------------------------------------------------


def _expect(path, *fragments, call=pdebench.inspect):
    with pytest.raises(PDEBenchFormatError) as exc:
        call(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg
    for frag in fragments:
        assert frag in msg, msg


def test_unknown_layout_lists_keys(tmp_path):
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f["velocity"] = np.zeros(3)
        f["particles"] = np.zeros(3)
    _expect(path, "unknown layout", "velocity", "particles")
    _expect(path, "unknown layout", call=pdebench.read)


def test_nan_is_reported_with_dataset(tmp_path):
    u = np.zeros((2, 3, 8), np.float32)
    u[1, 2, 5] = np.inf
    path = _tensor_file(tmp_path / "nan.h5", u, np.arange(8.0), np.arange(4.0))
    _expect(path, "'tensor'", "NaN/Inf", call=pdebench.read)


def test_nan_in_per_seed_group_names_the_group(tmp_path):
    path, _ = _per_seed_file(tmp_path / "rd.h5")
    with h5py.File(path, "r+") as f:
        f["0002/data"][0, 0, 0, 0] = np.nan
    _expect(path, "'0002/data'", "NaN/Inf", call=pdebench.read)


def test_wrong_rank(tmp_path):
    path = _tensor_file(tmp_path / "r.h5", np.zeros((2, 8), np.float32), np.arange(8.0), np.arange(3.0))
    _expect(path, "'tensor'", "rank 2")
    # a 1-D tensor next to a y-coordinate is also a rank mismatch
    extra = {"y-coordinate": np.arange(4.0)}
    path2 = _tensor_file(tmp_path / "r2.h5", np.zeros((2, 3, 8)), np.arange(8.0), np.arange(4.0), extra)
    _expect(path2, "'tensor'", "'y-coordinate'")


def test_missing_coordinate(tmp_path):
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f["tensor"] = np.zeros((2, 3, 8, 4), np.float32)
        f["x-coordinate"] = np.arange(8.0)
        f["t-coordinate"] = np.arange(4.0)
    _expect(path, "missing dataset", "'y-coordinate'")
    _expect(path, "'y-coordinate'", call=pdebench.read)


@pytest.mark.parametrize("key,length,axis", [("x-coordinate", 7, "x"), ("t-coordinate", 6, "t")])
def test_mismatched_coordinate_length(tmp_path, key, length, axis):
    coords = {"x-coordinate": np.arange(8.0), "t-coordinate": np.arange(4.0)}
    coords[key] = np.arange(float(length))
    path = _tensor_file(tmp_path / "c.h5", np.zeros((2, 3, 8)), coords["x-coordinate"], coords["t-coordinate"])
    _expect(path, f"'{key}'", f"{length} entries")


def test_variables_with_different_shapes(tmp_path):
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f["density"] = np.zeros((2, 3, 8))
        f["Vx"] = np.zeros((2, 3, 7))
        f["x-coordinate"] = np.arange(8.0)
        f["t-coordinate"] = np.arange(4.0)
    _expect(path, "'Vx'", "(2, 3, 7)")


def test_per_seed_missing_grid(tmp_path):
    path, _ = _per_seed_file(tmp_path / "rd.h5")
    with h5py.File(path, "r+") as f:
        del f["0000/grid/y"]
    _expect(path, "'0000/grid/y'")


def test_a_missing_file_is_named_missing_not_unreadable(tmp_path):
    # os.access() is False for a path that is not there: the check for existence must come first.
    with pytest.raises(PDEBenchFormatError, match=r"nope\.h5: does not exist"):
        pdebench.inspect(str(tmp_path / "nope.h5"))
