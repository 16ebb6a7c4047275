"""`python -m ray_jobs.predict`: a PDEBench file in, a PDEBench file out holding the input frames and
exactly what `Surrogate.rollout` predicts; bad inputs are one line before Ray, and nothing is
ever left half-written under --out.

The model is conftest's `trained` (the tiny pipeline, without Ray); the file is the smoke data.
The fast tests run without Ray (`--no-ray`); one Ray test and one cluster test run the same
prediction on Ray Data's actor pool and through `ray job submit`, and must write the same file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ups import Surrogate
from ups import predict as P
from ups.artifact import load_bundle, write_artifact
from ups.config import ConfigError
from ups.data import pdebench
from ups.storage import Storage

ROOT = Path(__file__).resolve().parents[1]
FRAMES_IN = 4  # the smoke recipe's data.initial_step
CHUNK = 8


@pytest.fixture(scope="module")
def small(smoke_data, tmp_path_factory) -> Path:
    """The smoke file's first 24 trajectories (the same coordinates): three chunks of CHUNK."""
    u, coords = pdebench.read(smoke_data, samples=slice(0, 24))
    path = tmp_path_factory.mktemp("small") / "small.h5"
    pdebench.write(path, u, coords)
    return path


@pytest.fixture(scope="module")
def truth(small):
    """The file's trajectories (24, 21, 128, 1) and coordinates, as PDEBench's reader sees them."""
    return pdebench.read(small)


def rollout(trained: Path, u: np.ndarray, steps: int | None = None) -> np.ndarray:
    """`Surrogate.rollout` of every trajectory's first frames, CHUNK trajectories at a time as predict calls it."""
    s = Surrogate.load(trained, device="cpu")
    return np.concatenate([s.rollout(u[a : a + CHUNK, :FRAMES_IN], steps) for a in range(0, len(u), CHUNK)])


@pytest.fixture(scope="module")
def expected(trained, truth) -> np.ndarray:
    """What the surrogate predicts from every trajectory's first frames, to the file's end."""
    return rollout(trained, truth[0])


def read_like_pdebench(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What PDEBench's `FNODatasetSingle` reads of a single-file 1-D dataset: `tensor` (N, T, X),
    `x-coordinate`, and `t-coordinate` with T+1 entries."""
    with h5py.File(path, "r") as f:
        assert set(f) == {"tensor", "x-coordinate", "t-coordinate"}
        return (np.array(f["tensor"], dtype=np.float32), np.array(f["x-coordinate"]), np.array(f["t-coordinate"]))


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ray_jobs.predict", *args], cwd=cwd, capture_output=True, text=True)


def test_no_ray_writes_the_input_frames_then_what_rollout_predicts(trained, small, truth, expected, tmp_path):
    out = tmp_path / "pred.h5"
    r = cli("--model", str(trained), "--data", str(small), "--out", str(out), "--no-ray", "--chunk", str(CHUNK))
    assert r.returncode == 0, r.stderr
    assert "[predict] 24/24 trajectories (100%)" in r.stdout and f"[predict] wrote {out}" in r.stdout
    u, coords = truth
    tensor, x, t = read_like_pdebench(out)
    assert tensor.shape == (24, 21, 128) and x.shape == (128,) and t.shape == (22,)
    assert np.array_equal(tensor[:, :FRAMES_IN], u[:, :FRAMES_IN, :, 0])  # copied, not recomputed
    assert np.array_equal(tensor[:, FRAMES_IN:], expected[..., 0])  # bit for bit
    assert np.array_equal(x, coords["x"].astype(np.float32)) and np.array_equal(t[:21], coords["t"].astype(np.float32))
    back, back_coords = pdebench.read(out)  # the project's own reader takes it as training data
    assert np.array_equal(back[..., 0], tensor) and np.array_equal(back_coords["t"], coords["t"].astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.h5"]  # no temporary file left


def test_steps_past_the_files_end_extend_time_by_dt(trained, small, truth, tmp_path):
    bundle = load_bundle(str(trained))
    plan = P.plan(bundle, str(small), str(tmp_path / "long.h5"), steps=20, chunk=CHUNK)
    P.run(plan, bundle, P.Options(ray=False), say=lambda _: None)
    u, coords = truth
    tensor, _, t = read_like_pdebench(tmp_path / "long.h5")
    assert tensor.shape == (24, FRAMES_IN + 20, 128) and t.shape == (FRAMES_IN + 20 + 1,)
    assert np.array_equal(t[:21], coords["t"].astype(np.float32))
    assert np.allclose(np.diff(t), coords["t"][1] - coords["t"][0], rtol=1e-4)
    assert np.array_equal(tensor[:, FRAMES_IN:], rollout(trained, u, 20)[..., 0])


def test_a_file_at_the_resolution_the_model_was_strided_from_is_strided(trained, small, truth, expected, tmp_path):
    """A model trained with x_stride 2, t_stride 2 (here: the trained model's record, altered in
    memory) reads a file of twice the cells and frames through its strides."""
    u, coords = truth
    fine = u[:CHUNK, :, :, 0].repeat(2, axis=1)[:, :41].repeat(2, axis=2)  # fine[:, ::2, ::2] is the data
    dx, dt = coords["x"][1] - coords["x"][0], coords["t"][1] - coords["t"][0]
    fine_coords = {"x": coords["x"][0] + dx / 2 * np.arange(256), "t": dt / 2 * np.arange(42)}
    pdebench.write(tmp_path / "fine.h5", fine, fine_coords)
    bundle = load_bundle(str(trained))
    data = bundle.cfg.data.model_copy(update={"x_stride": 2, "t_stride": 2})
    bundle.cfg = bundle.cfg.model_copy(update={"data": data})
    plan = P.plan(bundle, str(tmp_path / "fine.h5"), str(tmp_path / "out.h5"))
    assert (plan.x_stride, plan.t_stride, plan.steps) == (2, 2, 21 - FRAMES_IN)
    P.run(plan, bundle, P.Options(ray=False), say=lambda _: None)
    tensor, x, t = read_like_pdebench(tmp_path / "out.h5")
    assert np.array_equal(tensor[:, FRAMES_IN:], expected[:CHUNK, ..., 0])
    assert np.allclose(x, coords["x"], rtol=1e-6) and np.allclose(t[:21], coords["t"], atol=1e-6)
    # The same model given a file already at its grid reads it as it is.
    again = P.plan(bundle, str(small), str(tmp_path / "o2.h5"))
    assert (again.x_stride, again.t_stride) == (1, 1)


def test_an_interrupted_prediction_leaves_no_out_and_a_rerun_starts_clean(trained, small, expected, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    bundle = load_bundle(str(trained))
    out = tmp_path / "pred.h5"
    plan = P.plan(bundle, str(small), str(out), chunk=CHUNK)
    real = P.Predictor.predict
    calls = []

    def predict_then_stop(self, start, stop, how):
        calls.append(start)
        if len(calls) == 2:  # the first chunk is written by now
            how()
        return real(self, start, stop)

    def interrupt():
        raise KeyboardInterrupt

    handler = signal.getsignal(signal.SIGTERM)
    for how, caught in ((lambda: os.kill(os.getpid(), signal.SIGTERM), SystemExit), (interrupt, KeyboardInterrupt)):
        calls.clear()
        monkeypatch.setattr(P.Predictor, "predict", lambda self, a, b, how=how: predict_then_stop(self, a, b, how))
        with pytest.raises(caught):
            P.run(plan, bundle, P.Options(ray=False), say=lambda _: None)
        assert list(tmp_path.iterdir()) == []  # neither --out nor the temporary file
    assert signal.getsignal(signal.SIGTERM) is handler  # the run's own handler is gone with it
    monkeypatch.setattr(P.Predictor, "predict", real)
    Path(plan.tmp).write_bytes(b"what a killed run left")
    P.run(plan, bundle, P.Options(ray=False), say=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.h5"]
    assert np.array_equal(read_like_pdebench(out)[0][:, FRAMES_IN:], expected[..., 0])


# --- bad inputs: one line, exit 2, before Ray, nothing written --------------------------------------


@pytest.fixture(scope="module")
def artifact(trained, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("artifact") / "model"
    write_artifact(load_bundle(str(trained)), Storage(str(folder)))
    return folder


def _file(path: Path, u: np.ndarray, dt: float = 0.1) -> Path:
    """A PDEBench `tensor` file on the smoke data's domain ([0, 1), cell centres), written raw (NaN allowed)."""
    with h5py.File(path, "w") as f:
        f["tensor"] = u.astype(np.float32)
        f["x-coordinate"] = (np.arange(u.shape[2]) + 0.5) / u.shape[2]
        f["t-coordinate"] = dt * np.arange(u.shape[1] + 1)
    return path


def _nan_in_trajectory_2(ws: Path) -> Path:
    u = np.zeros((3, 21, 128))
    u[2, 1, 5] = np.nan
    return _file(ws / "nan.h5", u)


def _tampered(art: Path, ws: Path) -> Path:
    shutil.copytree(art, ws / "bad")
    data = bytearray((ws / "bad" / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (ws / "bad" / "model.safetensors").write_bytes(bytes(data))
    return ws / "bad"


def _there(path: Path, text: str = "mine") -> Path:
    path.write_text(text)
    return path


# case: (flags over the good ones, from (workspace, artifact, smoke data); the line must contain)
CASES = {
    "wrong grid": (
        lambda ws, art, sm: {"--data": _file(ws / "x64.h5", np.zeros((3, 21, 64)))},
        "file of the wrong grid: (64,); the model takes (128,)",
    ),
    "wrong dt": (
        lambda ws, art, sm: {"--data": _file(ws / "dt.h5", np.zeros((3, 21, 128)), dt=0.05)},
        "frames 0.05 apart; the model steps Δt 0.1",
    ),
    "wrong domain": (lambda ws, art, sm: {"--data": _domain(ws)}, "domain lengths [2], the model was trained on [1]"),
    "NaN input": (
        lambda ws, art, sm: {"--data": _nan_in_trajectory_2(ws)},
        "contains NaN/Inf (sample 2) in the input frames of trajectories 0..2",
    ),
    "tampered artifact": (
        lambda ws, art, sm: {"--model": _tampered(art, ws)},
        "model.safetensors: does not match the digest",
    ),
    "not a model": (lambda ws, art, sm: {"--model": ws}, "not a run folder, a registry family or an artifact"),
    "missing data": (lambda ws, art, sm: {"--data": ws / "nope.h5"}, "nope.h5: file not found"),
    "not HDF5": (lambda ws, art, sm: {"--data": _there(ws / "t.h5")}, "not an HDF5 file"),
    "existing out": (lambda ws, art, sm: {"--out": _there(ws / "out.h5")}, "a file is already there; pass --overwrite"),
    "out is data": (
        lambda ws, art, sm: {"--data": shutil.copy(sm, ws / "in.h5"), "--out": ws / "in.h5", "--overwrite": None},
        "is the --data file",
    ),
    "out folder missing": (lambda ws, art, sm: {"--out": ws / "no" / "o.h5"}, "does not exist"),
    "out not h5": (lambda ws, art, sm: {"--out": ws / "o.txt"}, "name an HDF5 file"),
    "steps 0": (lambda ws, art, sm: {"--steps": 0}, "--steps must be >= 1 (got 0)"),
    "chunk 0": (lambda ws, art, sm: {"--chunk": 0}, "--chunk must be >= 1"),
    "actors 0": (lambda ws, art, sm: {"--actors": 0}, "--actors must be > 0"),
    "unknown task": (lambda ws, art, sm: {"--task": "heat"}, "--task 'heat': not one of the model's tasks"),
    "gpu": (lambda ws, art, sm: {"--gpu": None}, "--gpu: 1 actor(s) x 1 GPU, this machine has 0"),
}


def _domain(ws: Path) -> Path:
    path = _file(ws / "wide.h5", np.zeros((3, 21, 128)))
    with h5py.File(path, "r+") as f:
        f["x-coordinate"][...] = 2 * f["x-coordinate"][()]
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_inputs_are_one_line_exit_2_before_ray_and_write_nothing(case, trained, artifact, smoke_data, tmp_path,
                                                                     monkeypatch, capsys):  # fmt: skip
    from ray_jobs import predict as job

    if case == "gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    setup, message = CASES[case]
    ws = tmp_path / "ws"
    ws.mkdir()
    flags = {"--model": trained, "--data": smoke_data, "--out": ws / "out.h5", **setup(ws, artifact, smoke_data)}
    argv = [str(a) for k, v in flags.items() for a in ((k,) if v is None else (k, v))]
    before = {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()}

    def tripwire(*a, **k):
        raise AssertionError("prediction started on a bad input")

    monkeypatch.setattr(P, "run", tripwire)
    monkeypatch.setattr(sys, "argv", ["ray_jobs.predict", *argv])
    with pytest.raises(SystemExit) as exit_:
        job.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()} == before  # nothing written, nothing replaced


def test_overwrite_replaces_an_existing_out(trained, small, truth, tmp_path):
    out = _there(tmp_path / "out.h5", "an old file")
    r = cli("--model", str(trained), "--data", str(small), "--out", str(out), "--no-ray", "--overwrite",
            "--steps", "3", "--chunk", str(CHUNK))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert np.array_equal(read_like_pdebench(out)[0][:, FRAMES_IN:], rollout(trained, truth[0], 3)[..., 0])


def test_validate_only_prints_the_plan_and_writes_nothing(trained, smoke_data, tmp_path):
    r = cli("--model", str(trained), "--data", f"file://{smoke_data}", "--out", str(tmp_path / "o.h5"),
            "--validate-only")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "120 trajectories, x_stride 1, t_stride 1" in r.stdout and "Ray Data, 2 actor(s)" in r.stdout
    assert r.stdout.rstrip().endswith("OK") and list(tmp_path.iterdir()) == []


def test_plan_refuses_a_several_channel_tensor_file(trained, tmp_path):
    """A model of one channel given a file of two: named before anything else is read."""
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["density"] = np.zeros((2, 21, 128), np.float32)
        f["Vx"] = np.zeros((2, 21, 128), np.float32)
        f["x-coordinate"] = (np.arange(128) + 0.5) / 128
        f["t-coordinate"] = 0.1 * np.arange(22)
    with pytest.raises(ConfigError, match=r"2 channel\(s\) \['density', 'Vx'\], the model takes 1"):
        P.plan(load_bundle(str(trained)), str(path), str(tmp_path / "o.h5"))


# --- on Ray -------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(n: int):
    """Ray gives an actor of one CPU one thread (OMP_NUM_THREADS=1); the reference uses as many."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.ray
def test_predict_on_ray_data_writes_what_no_ray_writes(ray_session, trained, small, tmp_path):
    """Two actors of one CPU, three chunks: one actor predicts two, in whatever order they finish."""
    bundle = load_bundle(str(trained))
    on_ray = P.plan(bundle, str(small), str(tmp_path / "ray.h5"), chunk=CHUNK)
    lines: list[str] = []
    summary = P.run(on_ray, bundle, P.Options(ray=True, actors=2, cpus_per_actor=1), say=lines.append)
    assert summary["trajectories"] == 24 and any("24/24 trajectories" in line for line in lines)
    local = P.plan(bundle, str(small), str(tmp_path / "local.h5"), chunk=CHUNK)
    with torch_threads(1):
        P.run(local, bundle, P.Options(ray=False), say=lambda _: None)
    with h5py.File(tmp_path / "ray.h5") as a, h5py.File(tmp_path / "local.h5") as b:
        assert set(a) == set(b) and all(np.array_equal(a[k][()], b[k][()]) for k in a)
        assert dict(a.attrs) == dict(b.attrs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.h5", "ray.h5"]


@pytest.mark.ray
@pytest.mark.cluster
def test_predict_submitted_to_the_autoscaling_cluster(trained, small, tmp_path):
    """`ray job submit` of predict on the local autoscaling cluster, which starts as a head of one
    CPU: the pool of two one-CPU actors needs the autoscaler to add a node, and the job writes what
    --no-ray writes."""
    import time

    from ups.local_cluster import LocalCluster

    cluster = LocalCluster(tmp_path / "cluster")
    cluster.up(ROOT / "cluster.yaml", cpus_per_node=1, max_nodes=2, idle_timeout_s=15)
    try:
        out = tmp_path / "cluster.h5"
        cluster.submit("predict", ["--model", str(trained), "--data", str(small), "--out", str(out),
                                   "--actors", "2", "--chunk", str(CHUNK)], module="ray_jobs.predict")  # fmt: skip
        end = time.time() + 600  # guards a hang only
        while not cluster.job_done("predict"):
            assert time.time() < end, "the predict job did not finish"
            time.sleep(1)
        logs = cluster.job_logs("predict")
        assert cluster.job_status("predict") == "SUCCEEDED", logs[-4000:]
        assert "[predict] 24/24 trajectories (100%)" in logs
    finally:
        cluster.stop_job("predict")
        cluster.down()
    bundle = load_bundle(str(trained))
    local = P.plan(bundle, str(small), str(tmp_path / "local.h5"), chunk=CHUNK)
    with torch_threads(1):
        P.run(local, bundle, P.Options(ray=False), say=lambda _: None)
    assert np.array_equal(read_like_pdebench(out)[0], read_like_pdebench(tmp_path / "local.h5")[0])
