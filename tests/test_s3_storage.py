"""`--storage s3://…` for real, on a local S3-compatible server (moto's server mode): run folders,
Ray checkpoints, the latent cache and the exports all live in the bucket; the driver is killed
mid-operator (its whole process session, embedded Ray included: the machine it ran on is gone);
the same command is refused while the dead driver's lease is fresh, then takes it over, resumes
from what the bucket holds and ends with the weights of the uninterrupted run.

The driver runs with its own embedded Ray, so the S3 settings in its environment reach every
worker (they come from the environment, never from the command line or the config).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.cluster]
BUCKET = "ups-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on a free port and the environment that points pyarrow (and so Ray) at it."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")},
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        end = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < end, "moto_server did not start"
                time.sleep(0.2)
        make_bucket = (
            "import os, pyarrow.fs as f; f.S3FileSystem(endpoint_override=os.environ['AWS_ENDPOINT_URL'], "
            f"allow_bucket_creation=True).create_dir('{BUCKET}')"
        )
        subprocess.run([sys.executable, "-c", make_bucket], env=env, check=True, timeout=60)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGKILL)


def s3(env: dict, code: str) -> str:
    """Run pyarrow against the bucket in a subprocess (the test process keeps no S3 settings)."""
    prelude = f"import json, pyarrow.fs as f; fs = f.FileSystem.from_uri('s3://{BUCKET}')[0]\n"
    r = subprocess.run([sys.executable, "-c", prelude + code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def read(env: dict, key: str) -> str:
    return s3(env, f"print(fs.open_input_stream('{BUCKET}/{key}').read().decode(), end='')")


def listing(env: dict, prefix: str) -> list[str]:
    code = f"print(json.dumps([i.path for i in fs.get_file_info(f.FileSelector('{BUCKET}/{prefix}', recursive=True))]))"
    return [p.removeprefix(f"{BUCKET}/{prefix}/") for p in json.loads(s3(env, code))]


def test_a_run_on_s3_storage_survives_a_dead_driver_and_ends_bit_identical(
    s3_env, tiny_reference, smoke_data, tmp_path
):
    cmd = [sys.executable, "-m", "ray_jobs.train", "--config", "tests/configs/tiny.yaml",
           "--set", f"data.path={smoke_data}", "--name", "s3run", "--storage", f"s3://{BUCKET}/runs"]  # fmt: skip
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        p = subprocess.Popen(cmd, cwd=ROOT, env=s3_env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    end = time.time() + 900
    while "[operator] epoch 2/4" not in log.read_text():
        assert p.poll() is None, log.read_text()[-3000:]
        assert time.time() < end, "timed out waiting for the operator's second epoch"
        time.sleep(0.5)
    os.killpg(p.pid, signal.SIGKILL)  # the driver and its embedded Ray, at once
    p.wait()
    keys = listing(s3_env, "runs/s3run")
    assert any(k.startswith("ray/operator/checkpoint_") for k in keys), "\n".join(keys)
    if "summary.json" in keys:  # written after the autoencoder: the operator is not done
        stages = json.loads(read(s3_env, "runs/s3run/summary.json"))["stages"]
        assert stages.get("operator", {}).get("status") != "completed"

    # No lock on an object store: the dead driver's lease blocks the run until its heartbeat is
    # STALE_S old (ups/runlock.py), so the same command is refused, in one line, until then.
    refused = 0
    while True:
        r = subprocess.run(cmd, cwd=ROOT, env=s3_env, capture_output=True, text=True, timeout=1200)
        out = r.stdout + r.stderr
        if r.returncode != 2 or "the run is in use by" not in out:
            break
        refused += 1
        assert refused < 40, out
        time.sleep(10)
    assert refused >= 1  # the lease was fresh when the driver died
    assert r.returncode == 0, out[-3000:]
    assert "taking over the lease of a driver that stopped beating" in out, out[-3000:]
    assert "== autoencoder: completed earlier" in out and "[operator] resumed at epoch" in out, out[-3000:]
    summary = json.loads(read(s3_env, "runs/s3run/summary.json"))
    ref = tiny_reference.summary["stages"]
    for stage in ("autoencoder", "operator"):
        assert summary["stages"][stage]["weights_sha256"] == ref[stage]["weights_sha256"], stage
    keys = listing(s3_env, "runs/s3run")
    assert {"run.json", "summary.json", "config.yaml", "metrics.jsonl"} <= set(keys), keys
    assert any(k.startswith("latent_cache/") and k.endswith(".parquet") for k in keys), keys
    assert any(k.startswith("stages/operator/") for k in keys), keys  # the exports


def test_a_streamed_run_reads_its_data_from_the_bucket(s3_env, smoke_data, tmp_path):
    """`data.path: s3://…` with `data.mode: stream`: the Ray tasks that read the chunks open the
    object themselves (no byte passes through the driver), and train what the same file on local
    disk trains."""
    s3(s3_env, f"fs.open_output_stream('{BUCKET}/data/smoke_burgers.h5').write(open({str(smoke_data)!r}, 'rb').read())")
    summaries = {}
    for name, path in (("local", str(smoke_data)), ("bucket", f"s3://{BUCKET}/data/smoke_burgers.h5")):
        cmd = [sys.executable, "-m", "ray_jobs.train", "--config", "tests/configs/tiny.yaml",
               "--set", f"data.path={path}", "--set", "data.mode=stream", "--set", "data.chunk_trajectories=8",
               "--set", "stages.operator.epochs=1",
               "--name", name, "--storage", str(tmp_path)]  # fmt: skip
        r = subprocess.run(cmd, cwd=ROOT, env=s3_env, capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        assert "data streamed from the files" in r.stdout
        summaries[name] = json.loads((tmp_path / name / "summary.json").read_text())
    local, bucket = summaries["local"], summaries["bucket"]
    assert bucket["data_sha256"] == local["data_sha256"]
    for stage in ("autoencoder", "operator"):
        assert bucket["stages"][stage]["weights_sha256"] == local["stages"][stage]["weights_sha256"], stage
