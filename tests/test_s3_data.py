"""`data.path: s3://…` on a local S3-compatible server (moto's server mode), without Ray: the tiny
2D recipe trains from an object in a bucket, in memory and streaming modes, to the weights it
trains from the same file on local disk; bad object-store paths are refused in one line (exit 2)
before anything starts, without echoing a secret. (Streaming tasks reading a bucket under Ray:
the same reader, tested through `read_chunk` here; `--storage s3://`: tests/test_s3_storage.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_s3_storage import BUCKET, s3, s3_env  # noqa: F401  (s3_env: the moto server fixture)

from ups import pipeline
from ups.backend.local_backend import LocalBackend
from ups.config import load_config
from ups.data import views
from ups.data.generate import generate
from ups.latent_cache import field_chunks, read_chunk
from ups.schema import DataConfig

ROOT = Path(__file__).resolve().parents[1]
TINY2D = ROOT / "tests" / "configs" / "tiny2d.yaml"
AWS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
       "AWS_EC2_METADATA_DISABLED")  # fmt: skip


@pytest.fixture(scope="module")
def bucket_data(s3_env, tmp_path_factory) -> tuple[Path, str]:  # noqa: F811
    """The tiny 2D dataset on local disk and as an object in the bucket (plus a non-HDF5 object)."""
    cfg = load_config(TINY2D).cfg
    path = tmp_path_factory.mktemp("s3data") / "tiny_advection2d.h5"
    assert cfg.data.generate is not None
    generate(cfg.data.generate, str(path), use_ray=False, progress=lambda _: None)
    s3(s3_env, f"fs.open_output_stream('{BUCKET}/data/tiny_advection2d.h5').write(open({str(path)!r}, 'rb').read())")
    s3(s3_env, f"fs.open_output_stream('{BUCKET}/data/notes.h5').write(b'not hdf5 at all')")
    return path, f"s3://{BUCKET}/data/tiny_advection2d.h5"


@pytest.fixture
def in_bucket_env(s3_env, monkeypatch):  # noqa: F811
    for key in AWS:
        monkeypatch.setenv(key, s3_env[key])


def test_a_bucket_object_reads_and_trains_like_the_local_file(bucket_data, in_bucket_env, tmp_path):
    local, uri = bucket_data
    a = views.load_tasks(DataConfig(path=str(local), initial_step=1), stream=False)[0]
    b = views.load_tasks(DataConfig(path=uri, initial_step=1, chunk_trajectories=4), stream=True)[0]
    assert a.name == b.name == "tiny_advection2d"
    assert views.data_digest([a]) == views.data_digest([b])
    chunks = field_chunks([b], ("train",), 4)
    got = np.concatenate([read_chunk([b], c, with_split=False)["u"] for c in chunks])
    assert np.array_equal(got, a.u[a.splits["train"]])  # what a Ray task streaming a chunk reads

    digests = {}
    for name, path, mode in (("local", str(local), "memory"), ("s3", uri, "memory"), ("s3-stream", uri, "stream")):
        loaded = load_config(
            TINY2D,
            [f"data.path={path}", f"data.mode={mode}", f"data.spill_dir={tmp_path / 'spill'}",
             "stages.diffusion_residual.epochs=0", "stages.consistency_distill.epochs=0",
             "stages.steady_prior.epochs=0", "stages.fno_baseline.epochs=0"],
        )  # fmt: skip
        opts = pipeline.PipelineOptions(
            name=name, storage=str(tmp_path / "runs"), quiet=True, backend=LocalBackend("cpu", say=lambda _: None)
        )
        summary = pipeline.run(loaded, opts).to_dict()
        digests[name] = (summary["data_sha256"], {s: r.get("weights_sha256") for s, r in summary["stages"].items()})
    assert digests["local"][1]["operator"]
    assert digests["s3"] == digests["local"] == digests["s3-stream"]


def validate(env: dict, *sets: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ray_jobs.train", "--config", str(TINY2D), "--no-ray", "--validate-only"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "path, says",
    [
        (f"s3://{BUCKET}/data/missing.h5", "not found"),
        (f"s3://{BUCKET}/data", "is a folder"),
        (f"s3://{BUCKET}/data/notes.h5", "is not an HDF5 file"),
        (f"s3://KEY:hunter2@{BUCKET}/data/tiny_advection2d.h5", "holds credentials"),
        (f"s3://{BUCKET}/data/tiny_advection2d.h5?secret_key=hunter2", "holds credentials"),
        ("hdfs://namenode/data/x.h5", "unknown scheme"),
        (f"s3://{BUCKET}", "needs a bucket and an object"),
    ],
)
def test_a_bad_object_store_path_gets_one_line(bucket_data, s3_env, path, says):  # noqa: F811
    r = validate(s3_env, f"data.path={path}")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert "data.path" in lines[0] or "s3://" in lines[0] or "hdfs://" in lines[0], lines[0]
    assert "hunter2" not in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_a_good_bucket_path_validates(bucket_data, s3_env):  # noqa: F811
    _, uri = bucket_data
    r = validate(s3_env, f"data.path={uri}", "data.mode=stream")
    assert r.returncode == 0, r.stdout + r.stderr
