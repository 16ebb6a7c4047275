"""Shared fixtures. One local Ray session serves every end-to-end test (env vars must be set
before `import ray`, so they live here at import time)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ups.ray_session import _LOCAL_ENV  # noqa: E402

for _k, _v in {
    **_LOCAL_ENV,
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    # Ray 2.59+ heads (the session's, and the local autoscaling cluster's) require a token, and Ray
    # reads the mode once, when it is first imported.
    "RAY_AUTH_MODE": "token",
}.items():
    os.environ.setdefault(_k, _v)
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 4 logical CPUs on 2 cores: 2 training workers plus Ray Data and eval."""
    import ray

    from ups import ray_session
    from ups.config import Config

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=4,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            configure_logging=False,
            log_to_driver=False,  # as the jobs run it: what users see reaches the driver as events
        )
    ray_session.configure_data(Config(), local=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """The smoke config's dataset, generated once per session (in-process, no Ray needed)."""
    from ups.config import load_config
    from ups.data.generate import generate

    cfg = load_config(ROOT / "configs" / "smoke.yaml").cfg
    path = tmp_path_factory.mktemp("data") / "smoke_burgers.h5"
    cached = ROOT / cfg.data.paths[0]
    if cached.exists():  # `make run` may already have generated it
        shutil.copy(cached, path)
    else:
        generate(cfg.data.generate, str(path), progress=lambda _: None)
    return path


@pytest.fixture(scope="session")
def trained(smoke_data, tmp_path_factory) -> Path:
    """The tiny pipeline with a diffusion corrector, trained without Ray: the model the Surrogate and
    predict tests load (they copy it before altering anything)."""
    from ups import pipeline
    from ups.backend.local_backend import LocalBackend
    from ups.config import load_config

    runs = tmp_path_factory.mktemp("runs")
    loaded = load_config(ROOT / "tests" / "configs" / "tiny.yaml", [
        f"data.path={smoke_data}", "stages.diffusion_residual.epochs=1", "eval.corrector=diffusion",
        "stages.operator.epochs=2"])  # fmt: skip
    opts = pipeline.PipelineOptions(name="sur", storage=str(runs), quiet=True, backend=LocalBackend("cpu"))
    pipeline.run(loaded, opts)
    return runs / "sur"


def submit_when_ready(jobs, entry: str, runtime_env: dict, timeout: float = 120) -> str:
    """Submit, retrying while the head's job agent is still starting (a fresh head answers
    "No available agent to submit job" for its first seconds)."""
    end = time.time() + timeout
    while True:
        try:
            return jobs.submit_job(entrypoint=entry, runtime_env=runtime_env)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > end:
                raise
            time.sleep(1)


@dataclass
class SubmittedRun:
    summary: dict
    logs: str
    runs: Path  # the local directory behind the job's file:// storage URI


@pytest.fixture(scope="session")
def tiny_reference(ray_session, smoke_data, tmp_path_factory) -> SubmittedRun:
    """The tiny pipeline (2 workers) submitted with `ray job submit`'s client to the session's head
    and run uninterrupted. It is both the job-submission test's subject and the reference the
    interrupted runs must match: one pipeline serves two claims (the suite pays per pipeline)."""
    import yaml
    from ray._private.worker import get_dashboard_url
    from ray.job_submission import JobStatus, JobSubmissionClient

    runs = tmp_path_factory.mktemp("submitted")
    jobs = JobSubmissionClient(f"http://{get_dashboard_url()}")
    # The job's interpreter is this virtualenv's; on a cluster it is the image's `python`.
    entry = (
        f"{sys.executable} -m ray_jobs.train --config tests/configs/tiny.yaml --set data.path={smoke_data} "
        f"--name reference --storage file://{runs}"
    )
    runtime_env = {"working_dir": str(ROOT), **yaml.safe_load((ROOT / "runtime_env.yaml").read_text())}
    job = submit_when_ready(jobs, entry, runtime_env)
    end = time.time() + 600
    while (status := jobs.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < end, "the reference job did not finish"
        time.sleep(1)
    logs = jobs.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    return SubmittedRun(json.loads((runs / "reference" / "summary.json").read_text()), logs, runs)
