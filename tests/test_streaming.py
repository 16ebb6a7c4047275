"""Streaming mode without Ray (`data.mode: stream`): the file readers give the in-memory view's
bytes, the chunked statistics its normaliser, the spilled shard the in-memory shard's rows for
every index form the stages use, and the tiny 2D pipeline trains bit-identical weights in both
modes while no process holds the dataset. (The Ray path and its worker-kill resume:
tests/test_streaming_ray.py.)"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch

from ups import pipeline
from ups.backend.local_backend import LocalBackend
from ups.config import load_config
from ups.data import views
from ups.data.generate import generate
from ups.latent_cache import field_chunks, fields_table, read_chunk
from ups.schema import DataConfig
from ups.train.spill import DiskArray, SpillFolder, spill

ROOT = Path(__file__).resolve().parents[1]
TINY2D = ROOT / "tests" / "configs" / "tiny2d.yaml"


@pytest.fixture(scope="module")
def data2d(tmp_path_factory) -> Path:
    cfg = load_config(TINY2D).cfg
    path = tmp_path_factory.mktemp("stream2d") / "tiny_advection2d.h5"
    assert cfg.data.generate is not None
    generate(cfg.data.generate, str(path), use_ray=False, progress=lambda _: None)
    return path


def both(path: Path, **kw) -> tuple[views.Task, views.Task]:
    cfg = DataConfig(path=str(path), initial_step=1, chunk_trajectories=3, **kw)
    memory, stream = views.load_tasks(cfg, stream=False)[0], views.load_tasks(cfg, stream=True)[0]
    assert isinstance(stream.u, views.FieldReader) and isinstance(memory.u, np.ndarray)
    return memory, stream


def test_a_file_reader_gives_the_in_memory_views_bytes(data2d):
    memory, stream = both(data2d, t_stride=2, x_stride=2)
    assert stream.u.shape == memory.u.shape and len(stream.u) == len(memory.u)
    np.testing.assert_array_equal(stream.normalizer.mean, memory.normalizer.mean)
    np.testing.assert_array_equal(stream.normalizer.std, memory.normalizer.std)
    rows = memory.splits["train"]
    for key in (rows, (rows, 1), (rows[::3], slice(1, 3)), 4, np.array([7, 2, 9, 8]), (slice(2, 9), -1)):
        np.testing.assert_array_equal(stream.u[key], memory.u[key])
    assert views.data_digest([stream]) == views.data_digest([memory])
    np.testing.assert_array_equal(stream.grid, memory.grid)


def test_streaming_statistics_merge_chunks_like_one_pass():
    rng = np.random.default_rng(0)
    u = (rng.normal(3.0, 2.0, size=(50, 4, 6, 2)) * [1, 100]).astype(np.float32)

    class Raw(views.FieldReader):
        def raw(self, start: int, stop: int) -> np.ndarray:
            return u[start:stop]

    for chunk in (1, 7, 50):
        reader = Raw("-", u.shape, 1, 1, views.Normalizer.fit(u, enabled=False), chunk)
        got = views.fit_streaming(reader, np.arange(10, 50))
        want = views.Normalizer.fit(u[10:50])
        np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6)
        np.testing.assert_allclose(got.std, want.std, rtol=1e-6)


def test_auto_mode_streams_only_past_the_memory_budget(data2d):
    size_mb = 40 * 8 * 16 * 16 * 4 / 2**20
    assert views.streams(DataConfig(path=str(data2d), mode="auto", memory_budget_mb=size_mb / 2))
    assert not views.streams(DataConfig(path=str(data2d), mode="auto", memory_budget_mb=size_mb * 2))
    assert views.streams(DataConfig(path=str(data2d), mode="stream"))
    assert not views.streams(DataConfig(path=str(data2d)))


def test_a_spilled_shard_answers_every_index_form_like_the_tensor(tmp_path):
    rng = np.random.default_rng(1)
    n, frames = 23, 6
    idx = rng.permutation(n) + 100  # arrives out of order, like a Ray Data shard
    z = rng.normal(size=(n, frames, 4, 3)).astype(np.float32)
    batches = [{"idx": idx[a : a + 5], "task": idx[a : a + 5] % 2, "z": z[a : a + 5]} for a in range(0, n, 5)]
    folder = SpillFolder(str(tmp_path))
    disk = spill(batches, folder, "t")
    order = np.argsort(idx)
    ref = torch.from_numpy(z[order])
    assert torch.equal(disk.idx, torch.from_numpy(idx[order])) and torch.equal(disk.task, disk.idx % 2)
    assert isinstance(disk.z, DiskArray) and disk.z.shape == ref.shape and disk.u is None
    traj, t = torch.tensor([3, 0, 22, 3]), torch.tensor([4, 0, 2, 1])
    frames_ = t[:, None] + torch.arange(2)
    for key in (
        (traj, t),  # autoencoder batches
        (traj[:, None], frames_),  # operator / FNO windows
        (traj, -1),  # steady prior targets
        (traj, 2),  # validation's first frame
        traj,  # whole trajectories
        (traj, slice(1, 4)),  # validation's frames after the inputs
        (traj, slice(None, -1)),
        (traj, slice(None, None, 2)),
        slice(4, 11),  # residual chunks
        (slice(4, 11), slice(2, 5)),
    ):
        assert torch.equal(disk.z[key], ref[key]), key
    with pytest.raises(IndexError):
        disk.z[torch.tensor([23])]
    assert len(list(tmp_path.iterdir())) == 1
    folder.close()
    assert not list(tmp_path.iterdir())  # the spill goes with its folder


def test_chunks_read_the_rows_of_the_in_memory_table(data2d):
    memory, stream = both(data2d)
    table = fields_table([memory], ("train", "val", "test"))
    chunks = field_chunks([stream], ("train", "val", "test"), 3)
    assert max(c["stop"] - c["start"] for c in chunks) == 3
    parts = [read_chunk([stream], c, with_split=False) for c in chunks]
    assert np.array_equal(np.concatenate([p["idx"] for p in parts]), table.column("idx").to_numpy())
    u = table.column("u").combine_chunks().to_numpy_ndarray()
    assert np.array_equal(np.concatenate([p["u"] for p in parts]), u)


def test_the_tiny_2d_recipe_trains_the_same_weights_streamed_as_in_memory(data2d, tmp_path):
    spill_dir = tmp_path / "spill"
    digests, logs = {}, {}
    for mode in ("memory", "stream"):
        loaded = load_config(
            TINY2D,
            [f"data.path={data2d}", f"data.mode={mode}", "data.chunk_trajectories=7", f"data.spill_dir={spill_dir}",
             "stages.consistency_distill.epochs=0", "stages.fno_baseline.epochs=0"],
        )  # fmt: skip
        said: list[str] = []
        opts = pipeline.PipelineOptions(
            name=mode, storage=str(tmp_path / "runs"), quiet=True, backend=LocalBackend("cpu", say=said.append)
        )
        summary = pipeline.run(loaded, opts)
        assert summary.data_mode == mode and summary.eval is not None
        digests[mode] = {s: r.weights_sha256 for s, r in summary.stages.items()}
        logs[mode] = summary.eval.nRMSE
    assert digests["stream"]["autoencoder"] and digests["stream"]["diffusion_residual"]
    assert digests["stream"] == digests["memory"]
    assert logs["stream"] == logs["memory"]
    gc.collect()  # the trainer's reference cycles hold the last shards until a collection
    assert not any(spill_dir.iterdir())  # every spilled shard was removed


def test_a_killed_workers_spill_is_removed_by_the_next_one_on_its_node(tmp_path):
    import subprocess
    import sys

    script = (
        f"from ups.train.spill import SpillFolder; import os; f = SpillFolder({str(tmp_path)!r}); "
        "open(os.path.join(f.path, 'x.f32'), 'wb').write(b'0' * 8); os._exit(9)"  # no clean-up: like a SIGKILL
    )
    child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert child.returncode == 9, child.stderr
    (orphan,) = tmp_path.iterdir()
    live = SpillFolder(str(tmp_path))
    assert not orphan.exists() and Path(live.path).exists()
    assert SpillFolder(str(tmp_path)).path != live.path and Path(live.path).exists()  # a live one stays
