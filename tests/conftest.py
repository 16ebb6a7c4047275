"""Shared fixtures. One local Ray session serves every end-to-end test (env vars must be set
before `import ray`, so they live here at import time)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ups.runtime import _LOCAL_ENV  # noqa: E402

for _k, _v in {**_LOCAL_ENV, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30", "WANDB_MODE": "offline",
               "WANDB_SILENT": "true"}.items():
    os.environ.setdefault(_k, _v)
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 4 logical CPUs on 2 cores: 2 training workers plus Ray Data and eval."""
    import ray

    from ups import runtime
    from ups.config import Config

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", configure_logging=False,
                 log_to_driver=True)
    runtime.configure_data(Config(), local=True)
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


TINY = ROOT / "tests" / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_reference(ray_session, smoke_data, tmp_path_factory) -> dict:
    """The tiny pipeline (2 workers) run once, uninterrupted: the digests others must match."""
    from ups import pipeline
    from ups.config import load_config

    loaded = load_config(TINY, [f"data.path={smoke_data}"])
    storage = tmp_path_factory.mktemp("reference")
    return pipeline.run(loaded, pipeline.PipelineOptions(name="reference", storage=str(storage), quiet=True))
