"""Cluster and job submission: cluster.yaml against Ray's own schema (offline), and the tiny
pipeline submitted with `ray job submit`'s client to a real local head, writing to a `file://`
storage URI, ending with the same weights as the same command run in-process."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def validate_cluster(cfg: dict) -> dict:
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    prepared = prepare_config(copy.deepcopy(cfg))  # merges provider defaults; no cloud calls
    validate_config(prepared)
    return prepared


def test_cluster_yaml_is_valid_for_the_autoscaler():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepared = validate_cluster(cfg)
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert "GPU" not in head["resources"]  # a CPU head
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu and all(t.get("min_workers", 0) == 0 and t["max_workers"] > 0 for t in gpu)
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in gpu)
    assert any("InstanceMarketOptions" not in t["node_config"] for t in gpu)  # on-demand fallback
    assert all("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"] if "--head" in c)
    assert any("pip install" in c and "-e ." in c for c in cfg["setup_commands"])


@pytest.mark.parametrize("breakage", ["typo", "fraction", "head_type"])
def test_schema_check_catches_mistakes(breakage):
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    if breakage == "typo":
        cfg["setup_comands"] = cfg.pop("setup_commands")
    elif breakage == "fraction":
        cfg["available_node_types"]["gpu_spot"]["resources"]["CPU"] = 0.5
    else:
        cfg["head_node_type"] = "nope"
    with pytest.raises(Exception):
        validate_cluster(cfg)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.ray
def test_job_submit_runs_the_pipeline_on_a_local_head(tiny_reference, smoke_data, tmp_path, monkeypatch):
    from ray.job_submission import JobStatus, JobSubmissionClient

    gcs, dash, agent, grpc, metrics, client, renv, mn, mx = free_ports(9)
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{venv_bin}:{env['PATH']}"  # the job's `python` is this virtualenv's
    head = subprocess.Popen(
        [f"{venv_bin}/ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--num-cpus=4", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={grpc}",
         f"--metrics-export-port={metrics}", f"--ray-client-server-port={client}", f"--runtime-env-agent-port={renv}",
         f"--min-worker-port={min(mn, mx)}", f"--max-worker-port={min(mn, mx) + 400}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        monkeypatch.setenv("RAY_AUTH_MODE", "token")  # Ray 2.59+ local heads require the token
        address = f"http://127.0.0.1:{dash}"
        end = time.time() + 120
        while True:
            try:
                jobs = JobSubmissionClient(address)
                break
            except Exception:
                if time.time() > end:
                    raise
                time.sleep(1)
        storage = f"file://{tmp_path}/runs"
        entry = (f"python -m ray_jobs.train --config tests/configs/tiny.yaml --set data.path={smoke_data} "
                 f"--name submitted --storage {storage}")
        runtime_env = {"working_dir": str(ROOT), **yaml.safe_load((ROOT / "runtime_env.yaml").read_text())}
        job = jobs.submit_job(entrypoint=entry, runtime_env=runtime_env)
        end = time.time() + 600
        while (status := jobs.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            assert time.time() < end, "job did not finish"
            time.sleep(2)
        logs = jobs.get_job_logs(job)
        assert status == JobStatus.SUCCEEDED, logs[-4000:]
        assert "== autoencoder:" in logs and "eval [val]" in logs
        summary = json.loads((tmp_path / "runs" / "submitted" / "summary.json").read_text())
        assert summary["eval"]["nRMSE"] < summary["eval"]["persistence_nRMSE"]
        for stage in ("autoencoder", "operator"):  # a job on a cluster = the same command run locally
            assert summary["stages"][stage]["weights_sha256"] == tiny_reference["stages"][stage]["weights_sha256"]
            assert summary["stages"][stage]["checkpoint"].startswith(str(tmp_path / "runs" / "submitted" / "ray"))
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # stop the head we started, by its process; never `ray stop`
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
