"""What every benchmark shares: the machine/version context printed beside its figures, the one
JSON line it emits, the pipeline configs it runs (the smoke recipe, shrunk per bench), and the
real trainer set up on real or synthetic latents.

Benchmarks never re-implement the training step or build networks by hand: they run
`ups.train.trainer.StageTrainer` (over a `LocalContext`, or under Ray Train through a backend),
and networks come from `ups.models.factory` through the stages."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # config data paths are relative to the repository root, as for the CLI

if TYPE_CHECKING:
    import torch

    from ups.config import Config, LoadedConfig
    from ups.contracts import TrainJob
    from ups.data.views import DataMeta
    from ups.train.shard import Trajectories
    from ups.train.trainer import StageTrainer


def quiet(_msg: str) -> None:
    pass


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def context() -> dict[str, Any]:
    import numpy
    import torch

    ctx = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }
    try:
        import ray

        ctx["ray"] = ray.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        ctx["gpu"] = torch.cuda.get_device_name()
    return ctx


def emit(bench: str, figures: dict[str, Any], **extra: Any) -> None:
    print(json.dumps({"bench": bench, **figures, **extra, "context": context()}), flush=True)


# -- pipeline runs -------------------------------------------------------------------------------


def smoke(*overrides: str, config: str | Path = ROOT / "configs" / "smoke.yaml") -> LoadedConfig:
    """configs/smoke.yaml (or `config`) plus per-bench overrides (its data is generated on first use)."""
    from ups.config import load_config

    base = ["logging.wandb.enabled=false", "eval.test=false", "eval.plots=false", "checkpoint.every_steps=null"]
    return load_config(config, [*base, *overrides])


def ensure_data(loaded: LoadedConfig) -> None:
    """Generate the config's missing data files now (in this process), as the pipeline would."""
    from ups import pipeline
    from ups.backend.local_backend import LocalBackend

    pipeline.ensure_data(loaded.cfg, pipeline.preflight(loaded), LocalBackend(device="cpu"), quiet)


def run_cli(module: str, config: str, name: str, *flags: str) -> tuple[float, float]:
    """`python -m <module> --config CONFIG --name NAME --storage bench/out FLAGS` as a fresh process
    with no RAY_ADDRESS (so an embedded Ray, as a user's first command gets); exits with its stderr
    if it fails. Returns when it started (Unix seconds) and its wall time."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", module, "--config", config, "--name", name, "--storage", str(OUT), *flags]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[1:])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return t0, time.time() - t0


def run_pipeline(loaded: LoadedConfig, name: str, backend: Any = None) -> dict:
    """The whole pipeline, quietly, in bench/out/<name>-<time>; `backend` None means Ray. Returns
    summary.json's contents."""
    from ups import pipeline

    opts = pipeline.PipelineOptions(name=f"{name}-{int(time.time())}", storage=str(OUT), quiet=True, backend=backend)
    return pipeline.run(loaded, opts).to_dict()


def read_rows(run: str | Path, stage: str) -> list[dict]:
    """A stage's per-epoch rows from a run folder's metrics.jsonl."""
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if r["stage"] == stage]


def stage_rows(summary: dict, stage: str) -> list[dict]:
    return read_rows(OUT / summary["name"], stage)


# -- the trainer on its own ----------------------------------------------------------------------


def data_meta(cfg: Config) -> DataMeta:
    """The metadata of the config's data files (what the pipeline ships to the trainer)."""
    from ups.data import views

    return views.DataMeta.from_tasks(views.load_tasks(cfg.data), cfg.data.initial_step)


def synthetic_meta(cfg: Config) -> DataMeta:
    """Metadata shaped like `data.generate` after striding, for one 1-D task, without a data file."""
    import numpy as np

    from ups.data.views import DataMeta, Normalizer

    gen, d = cfg.data.generate, cfg.data
    assert gen is not None, "synthetic data follows data.generate"
    cells = len(range(0, gen.resolution, d.x_stride))
    frames = len(range(0, gen.frames, d.t_stride))
    dt = gen.t_end / (gen.frames - 1) * d.t_stride
    norm = Normalizer(np.zeros(1, np.float32), np.ones(1, np.float32))
    grid = ((np.arange(cells) + 0.5) / cells).astype(np.float32)[:, None]
    return DataMeta(tasks=[gen.pde], dts=[dt], grid=grid, lengths=[1.0], normalizers=[norm], frames=frames,
                    initial_step=d.initial_step)  # fmt: skip


def synthetic_latents(
    cfg: Config, meta: DataMeta, n_train: int, n_val: int, fields: bool = True
) -> dict[str, Trajectories]:
    """Random latent trajectories (and val fields, for decoded validation), on the CPU like a
    worker's shard."""
    import torch

    from ups.train.shard import Trajectories

    g = torch.Generator().manual_seed(0)
    tok, dim = cfg.latent.tokens, cfg.latent.dim

    def split(n: int, offset: int, with_u: bool) -> Trajectories:
        z = torch.randn(n, meta.frames, tok, dim, generator=g)
        u = torch.randn(n, meta.frames, *meta.spatial_shape, meta.channels, generator=g) if with_u else None
        return Trajectories(torch.arange(offset, offset + n), torch.zeros(n, dtype=torch.long), z=z, u=u)

    return {"train": split(n_train, 0, False), "val": split(n_val, n_train, fields)}


def cache_latents(summary: dict) -> dict[str, Trajectories]:
    """A finished run's latent cache in memory, without Ray (what LocalBackend trains on)."""
    from ups.latent_cache import LatentCache
    from ups.storage import Storage

    uri = summary["latent_cache"]["uri"]
    cache = LatentCache(uri, Storage(uri).read_json("manifest.json"))
    return {"train": cache.trajectories("train"), "val": cache.trajectories("val")}


def stage_job(
    stage: str, cfg: Config, meta: DataMeta, folder: str | Path, handoff: dict[str, tuple[str, str]]
) -> TrainJob:
    """The TrainJob the pipeline would hand the trainer for `stage`, with its run, export and
    checkpoint folders under `folder`; `handoff`: needed stage -> (export uri, weights sha256)."""
    from ups import config as C
    from ups.contracts import TrainJob

    folder = Path(folder)
    return TrainJob(
        stage=stage, cfg=C.to_wire(cfg), config_digest=C.digest(cfg), meta=meta.to_dict(), run_uri=str(folder),
        export_uri=str(folder / "stages" / stage / "export.pt"), checkpoint_uri=str(folder / "ray" / stage),
        handoff={n: uri for n, (uri, _) in handoff.items()}, handoff_sha256={n: sha for n, (_, sha) in handoff.items()},
    )  # fmt: skip


def run_handoff(summary: dict, stage: str) -> dict[str, tuple[str, str]]:
    """The exports a finished run hands `stage` (export uri, weights sha256 per needed stage)."""
    from ups.stages import registry

    recs = summary["stages"]
    return {n: (recs[n]["export"], recs[n]["weights_sha256"]) for n in registry.get(stage).needs}


def synthetic_handoff(stage: str, cfg: Config, meta: DataMeta, folder: str | Path) -> dict[str, tuple[str, str]]:
    """Freshly initialised exports of the stages `stage` needs (the autoencoder for the operator),
    built by the model factory and written as the trainer writes exports."""
    import torch

    from ups import config as C
    from ups.contracts import BestMetric
    from ups.exports import write_export
    from ups.models import factory
    from ups.stages import registry

    build = lambda role: factory.build(role, cfg.model, meta, cfg.latent).state_dict()
    makers = {"autoencoder": lambda: {r: build(r) for r in ("encoder", "decoder")}}
    out = {}
    torch.manual_seed(0)
    for need in registry.get(stage).needs:
        if need not in makers:
            raise NotImplementedError(f"no synthetic export for {need!r}; train it with the pipeline")
        uri = str(Path(folder) / "handoff" / need / "export.pt")
        sha = write_export(uri, need, makers[need](), BestMetric("synthetic", 0.0, 0), C.digest(cfg))
        out[need] = (uri, sha)
    return out


def ready_trainer(job: TrainJob, data: dict[str, Trajectories], device: str = "cpu") -> StageTrainer:
    """A StageTrainer over a LocalContext, through build, ingest, restore and prepare: what
    `fit()` does before its first epoch."""
    from ups.train.context import LocalContext
    from ups.train.trainer import StageTrainer

    trainer = StageTrainer(job, LocalContext(data, device=device))
    trainer.build()
    trainer.ingest()
    trainer.restore()
    trainer.prepare()
    return trainer


def fixed_batch(trainer: StageTrainer) -> dict[str, torch.Tensor]:
    """The first micro-batch of epoch 0, built by the stage (on the trainer's device)."""
    import torch

    ids = torch.arange(trainer.micro_batch)
    return trainer.stage.batch(trainer.train_data, ids, torch.Generator().manual_seed(0))


def step(trainer: StageTrainer, batch: dict[str, torch.Tensor]) -> None:
    """One optimizer step of the trainer (accum_steps 1): its micro_step, then its optimizer_step.
    The trainer must have run `train_epoch()` once (that sets up the epoch's accumulators)."""
    assert trainer.tcfg.accum_steps == 1, "one micro-batch per optimizer step"
    trainer.micro_step(batch, trainer.micro_batch, sync=True)
    trainer.optimizer_step()
