"""The UPS pipeline on Ray: stages in order, each a TorchTrainer, then decoded evaluation.

    preflight (no Ray) -> run folder -> Ray -> data (generated if missing) -> autoencoder
    -> latent cache (Ray Data) -> operator -> diffusion_residual -> consistency_distill
    -> steady_prior -> evaluate (val; test for the report) -> summary.json

A finished stage is recorded in summary.json with its export; re-running the same command skips
it and resumes the interrupted stage from its newest valid checkpoint.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from ups import config as C
from ups.config import STAGE_NAMES, Config, ConfigError
from ups.data import views
from ups.data.pdebench import FileInfo
from ups.run import RunDir
from ups.stages import STAGES
from ups.storage import Storage

EXPORT_FILE = "export.pt"


class Preempted(RuntimeError):
    """A stop was requested (SIGTERM); the interrupted stage checkpointed where it was."""


@dataclass
class PipelineOptions:
    name: str
    storage: str
    restart: bool = False
    accept_config_change: bool = False
    eval_test: bool | None = None  # None: follow eval.test
    quiet: bool = False
    stage_callbacks: dict | None = None  # stage -> Ray Train UserCallbacks (e.g. reports to Tune)


# -- Before Ray: everything that can be wrong with the config and the data -----------------------


def preflight(loaded: C.LoadedConfig) -> dict[str, FileInfo | None]:
    """Check stage dependencies, data files and batch sizes; raises ConfigError (exit 2)."""
    cfg, src = loaded.cfg, loaded.sources
    where = lambda key: C._source_of(key, src, str(loaded.path))  # noqa: E731
    active = [s for s in STAGE_NAMES if getattr(cfg.stages, s).epochs > 0]
    for s in active:
        for need in STAGES[s].needs:
            if need not in active:
                raise ConfigError(f"{where(f'stages.{s}.epochs')}: stages.{s} needs stages.{need}, which has 0 epochs")
    for s in ("autoencoder", "operator"):
        if s not in active:
            raise ConfigError(
                f"{where(f'stages.{s}.epochs')}: stages.{s}.epochs must be > 0 "
                f"(every surrogate needs an encoder and an operator)"
            )
    infos: dict[str, FileInfo | None] = {}
    for path in cfg.data.paths:
        if not os.path.exists(path) and cfg.data.generate is not None:
            infos[path] = None  # generated on first use
            continue
        infos[path] = views.check_file(path, cfg.data, where("data.path"))
    grid = _grid_shape(cfg, infos)
    p = cfg.model.encoder.patch_size
    if any(n % p for n in grid):
        raise ConfigError(
            f"{where('model.encoder.patch_size')}: model.encoder.patch_size={p} does not divide "
            f"the grid {grid} (after data.x_stride={cfg.data.x_stride})"
        )
    _check_batches(cfg, infos, where)
    return infos


def _grid_shape(cfg: Config, infos: dict[str, FileInfo | None]) -> tuple[int, ...]:
    info = next(iter(infos.values()))
    shape = info.spatial_shape if info else (cfg.data.generate.resolution,)
    return tuple(len(range(0, n, cfg.data.x_stride)) for n in shape)


def _check_batches(cfg: Config, infos: dict[str, FileInfo | None], where) -> None:
    n_train, frames = 0, None
    for info in infos.values():
        n, t = (info.n_samples, info.n_times) if info else (cfg.data.generate.samples, cfg.data.generate.frames)
        n = min(n, cfg.data.max_samples or n)
        splits = views.split_indices(n, cfg.data.test_fraction, cfg.data.val_fraction)
        if len(splits["val"]) == 0 or len(splits["train"]) == 0:
            raise ConfigError(
                f"{where('data.val_fraction')}: {n} samples leave an empty split "
                f"(train {len(splits['train'])}, val {len(splits['val'])})"
            )
        n_train += len(splits["train"])
        frames = len(range(0, t, cfg.data.t_stride))
    b = cfg.training.batch_size
    for s in STAGE_NAMES:
        scfg = getattr(cfg.stages, s)
        if scfg.epochs == 0:
            continue
        per_traj = STAGES[s].samples_per_trajectory(frames, scfg)
        for world in cfg.scaling.world_sizes:
            have = (n_train // world) * per_traj
            if have < b // world:
                raise ConfigError(
                    f"{where('training.batch_size')}: training.batch_size={b} needs {b // world} "
                    f"samples per worker, but stage {s} has {have} at world size {world}"
                )


# -- The run ------------------------------------------------------------------------------------


def run(loaded: C.LoadedConfig, opts: PipelineOptions) -> dict[str, Any]:
    from ups import runtime

    cfg = loaded.cfg
    infos = preflight(loaded)
    storage = Storage(opts.storage)
    rundir = RunDir(storage, opts.name)
    info = rundir.open(cfg, restart=opts.restart, accept_change=opts.accept_config_change)
    say = (lambda *_: None) if opts.quiet else (lambda msg: print(msg, flush=True))
    say(f"run {opts.name} -> {rundir.dir.uri}")

    runtime.connect(cfg)
    stopper = _Stopper(rundir.dir.uri)
    _ensure_data(cfg, infos, say)
    tasks = views.load_tasks(cfg.data)
    meta = views.DataMeta.from_tasks(tasks, cfg.data.initial_step)
    data_sha = views.data_digest(tasks)
    summary = rundir.summary()
    summary.update(name=opts.name, config_digest=info["config_digest"], data_sha256=data_sha)
    wandb = _wandb_settings(cfg, info, rundir)

    cache = None
    for name in STAGE_NAMES:
        stage_cls, scfg = STAGES[name], getattr(cfg.stages, name)
        rec = summary["stages"].get(name, {})
        if scfg.epochs == 0:
            summary["stages"][name] = {"status": "skipped", "epochs": 0}
            say(f"== {name}: skipped (0 epochs)")
            continue
        if rec.get("status") == "completed" and rundir.dir.exists("stages", name, EXPORT_FILE):
            say(f"== {name}: completed earlier (best {rec['best']['metric']}={rec['best']['value']:.4g}), skipped")
            continue
        stopper.check(name)
        if stage_cls.inputs == "latents" and cache is None:
            cache = _latent_datasets(_latent_cache(rundir, tasks, meta, cfg, summary, data_sha, say))
        datasets = _datasets(stage_cls.inputs, tasks, cache)
        say(f"== {name}: {scfg.epochs} epochs on {cfg.scaling.num_workers} worker(s)")
        summary["stages"][name] = _run_stage(
            name,
            cfg,
            info,
            meta,
            rundir,
            summary,
            datasets,
            wandb,
            opts.accept_config_change,
            stopper.name,
            (opts.stage_callbacks or {}).get(name, []),
        )
        rundir.write_summary(summary)
        if summary["stages"][name]["status"] == "interrupted":
            raise Preempted(f"stage {name} stopped on request and checkpointed; run the same command to resume")

    stopper.check("evaluation")
    exports = load_exports(rundir, summary)
    summary["eval"] = evaluate_run(rundir, cfg, meta, tasks, exports, "val", say)
    if cfg.eval.corrector == "auto" and summary["eval"]["corrector"] != "none":
        cfg, summary["eval"] = _keep_corrector_if_it_helps(rundir, cfg, meta, tasks, exports, summary["eval"], say)
    if cfg.eval.test if opts.eval_test is None else opts.eval_test:
        summary["eval_test"] = evaluate_run(rundir, cfg, meta, tasks, exports, "test", say)
    rundir.write_summary(summary)
    _final_wandb(wandb, summary)
    if not opts.quiet:
        print(summary_table(summary))
    return summary


def _ensure_data(cfg: Config, infos: dict, say) -> None:
    from ups.data.generate import generate

    for path, info in infos.items():
        if info is None:
            say(f"data: {path} is missing; generating it from data.generate")
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            generate(cfg.data.generate, path, use_ray=True)


def _datasets(inputs: str, tasks, cache) -> dict:
    from ups.latent_cache import fields_dataset

    if inputs == "fields":
        return {"train": fields_dataset(tasks, "train"), "val": fields_dataset(tasks, "val")}
    return cache


def _latent_datasets(cache) -> dict:
    """The cache read once and held in the object store for every latent stage of this run."""
    return {"train": cache.dataset("train").materialize(), "val": cache.dataset("val").materialize()}


def _latent_cache(rundir: RunDir, tasks, meta, cfg, summary, data_sha, say):
    from ups.latent_cache import build_or_reuse

    ae = summary["stages"]["autoencoder"]
    t0 = time.perf_counter()
    cache, reused = build_or_reuse(rundir.dir, tasks, meta, cfg, ae["export"], ae["weights_sha256"], data_sha)
    summary["latent_cache"] = {
        "uri": cache.uri,
        "reused": reused,
        "rows": cache.manifest["rows"],
        "encoder_sha256": ae["weights_sha256"],
    }
    say(f"== latent cache: {'reused' if reused else 'built'} at {cache.uri} ({time.perf_counter() - t0:.1f}s)")
    return cache


def _run_stage(
    name, cfg: Config, info, meta, rundir: RunDir, summary, datasets, wandb, accept, stop_flag, callbacks
) -> dict:
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    from ups.train.loop import train_loop_per_worker

    export_uri = rundir.dir.uri_of("stages", name, EXPORT_FILE)
    loop_config = {
        "cfg": C.to_dict(cfg),
        "config_digest": info["config_digest"],
        "stage": name,
        "meta": meta.to_dict(),
        "handoff": {n: summary["stages"][n]["export"] for n in STAGES[name].needs},
        "run_uri": rundir.dir.uri,
        "ray_run_uri": rundir.dir.uri_of("ray", name),
        "export_uri": export_uri,
        "wandb": wandb,
        "accept_config_change": accept,
        "stop_flag": stop_flag,
    }
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": sc.gpus_per_worker} if sc.use_gpu else {}), **sc.resources}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers,
            use_gpu=sc.use_gpu,
            resources_per_worker=resources,
            elastic_resize_monitor_interval_s=sc.elastic_resize_interval_s,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=rundir.dir.uri_of("ray"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.checkpoint.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["train"], execution_options=ExecutionOptions(preserve_order=True)
        ),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    out = result.return_value or {}
    return {
        "status": "interrupted" if out.get("preempted") else "completed",
        "epochs": out.get("epochs"),
        "best": out.get("best"),
        "stopped_early": out.get("stopped_early"),
        "world_size": out.get("world_size"),
        "restarts": out.get("restarts"),
        "world_sizes": out.get("world_sizes"),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "export": export_uri,
        "weights_sha256": out.get("weights_sha256"),
        "wall_time_s": round(time.perf_counter() - t0, 2),
        "phases_s": out.get("phases_s"),
        "first_step_unix": out.get("first_step_unix"),
    }


class _Stopper:
    """SIGTERM -> ask the running stage to checkpoint and return, and start nothing new."""

    def __init__(self, run_uri: str):
        import signal
        import uuid

        from ups.train.stop import StopFlag, flag_name

        self.name = flag_name(f"{run_uri}#{uuid.uuid4().hex}")
        self.flag = StopFlag.options(name=self.name).remote()
        self.reason: str | None = None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.reason = "SIGTERM"
        print("SIGTERM: asking the running stage to checkpoint and stop", flush=True)
        self.flag.set.remote(self.reason)

    def check(self, next_step: str) -> None:
        if self.reason:
            raise Preempted(f"stopped on {self.reason} before {next_step}; run the same command to resume")


def load_exports(rundir: RunDir, summary: dict) -> dict[str, dict]:
    from ups.train.state import from_bytes

    return {
        n: from_bytes(Storage(rec["export"]).read_bytes())["tensors"]
        for n, rec in summary["stages"].items()
        if rec.get("status") == "completed"
    }


def outside_placement_group():
    """Schedule a task on the cluster, not inside the caller's placement group (e.g. a Tune trial's)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=None)


def evaluate_exports(
    cfg: Config, meta, tasks, exports: dict, split: str, *, max_samples: int | None = None, horizon: int | None = None
) -> dict:
    """Decoded evaluation of stage exports as a Ray task (a GPU one when the run uses GPUs)."""
    import ray

    from ups.eval.evaluate import build_surrogate, evaluate

    cfg = cfg.model_copy(
        update={
            "eval": cfg.eval.model_copy(
                update={"max_samples": max_samples or cfg.eval.max_samples, "horizon": horizon or cfg.eval.horizon}
            )
        }
    )

    def job(cfg_dict, meta_dict, exports, tasks, split):
        cfg_, meta_ = Config.model_validate(cfg_dict), views.DataMeta.from_dict(meta_dict)
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return evaluate(build_surrogate(cfg_, meta_, exports, device), tasks, split, cfg_)

    opts = {"num_gpus": 1, "num_cpus": 0} if cfg.scaling.use_gpu else {"num_cpus": 1}
    opts["scheduling_strategy"] = outside_placement_group()
    return ray.get(ray.remote(job).options(**opts).remote(C.to_dict(cfg), meta.to_dict(), exports, tasks, split))


def evaluate_run(rundir: RunDir, cfg: Config, meta, tasks, exports: dict, split: str, say) -> dict:
    """The run's evaluation on a split: metrics, plots and eval/{split}/ files."""
    from ups.eval import plots

    result = evaluate_exports(cfg, meta, tasks, exports, split)
    arrays = result.pop("_arrays")
    rundir.dir.write_json(result, "eval", split, "metrics.json")
    if cfg.eval.plots:
        rundir.dir.write_bytes(
            plots.fields_png(arrays["truth"], arrays["pred"], meta.initial_step), "eval", split, "fields.png"
        )
        rundir.dir.write_bytes(
            plots.horizon_png(result["horizon_nRMSE"], meta.initial_step), "eval", split, "horizon.png"
        )
    say(
        f"== eval ({split}): nRMSE={result['nRMSE']:.4g}  persistence={result['persistence_nRMSE']:.4g}"
        f"  ({result['samples']} trajectories, {result['horizon']} steps, corrector={result['corrector']})"
    )
    return result


def _keep_corrector_if_it_helps(rundir: RunDir, cfg: Config, meta, tasks, exports: dict, val: dict, say):
    """`eval.corrector: auto` keeps the trained corrector only if it beats the bare operator on val
    nRMSE (the evaluation scores both); otherwise val is re-scored without it, and test follows
    the same choice. Chosen on val alone, so the test split still selects nothing."""
    kind, scores = val["corrector"], {val["corrector"]: val["nRMSE"], "none": val["operator_nRMSE"]}
    if scores[kind] <= scores["none"]:
        val["corrector_selection"] = scores
        return cfg, val
    say(
        f"== eval: corrector {kind} does not beat the operator alone on val "
        f"({scores[kind]:.4g} vs {scores['none']:.4g}); evaluating without it"
    )
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"corrector": "none"})})
    val = evaluate_run(rundir, cfg, meta, tasks, exports, "val", say)
    val["corrector_selection"] = scores
    return cfg, val


def _wandb_settings(cfg: Config, info: dict, rundir: RunDir) -> dict | None:
    w = cfg.logging.wandb
    if not w.enabled or w.mode == "disabled":
        return None
    return {
        "enabled": True,
        "mode": w.mode,
        "project": w.project,
        "entity": w.entity,
        "group": w.group,
        "tags": w.tags,
        "id": info["wandb_id"],
        "name": info["name"],
        "dir": rundir.dir.path() if rundir.dir.local else None,
    }


def _final_wandb(settings: dict | None, summary: dict) -> None:
    from ups.tracking import WandbRun

    run = WandbRun(settings)
    flat = {f"eval/{k}": v for k, v in summary.get("eval", {}).items() if isinstance(v, (int, float))}
    flat.update({f"test/{k}": v for k, v in summary.get("eval_test", {}).items() if isinstance(v, (int, float))})
    run.summary(flat)
    run.finish()


def summary_table(summary: dict) -> str:
    lines = [f"{'stage':<22}{'status':<11}{'epochs':>7}  {'best validation metric':<34}{'wall s':>8}"]
    for name in STAGE_NAMES:
        rec = summary["stages"].get(name, {})
        best = rec.get("best") or {}
        metric = f"{best.get('metric', '')}={best['value']:.4g}" if best.get("value") is not None else "-"
        wall = rec.get("wall_time_s")
        lines.append(
            f"{name:<22}{rec.get('status', '-'):<11}{rec.get('epochs') or 0:>7}  {metric:<34}"
            f"{wall if wall is not None else '-':>8}"
        )
    for key in ("eval", "eval_test"):
        ev = summary.get(key)
        if ev:
            lines.append(
                f"{key} [{ev['split']}]: nRMSE {ev['nRMSE']:.4g} | operator "
                f"{ev.get('operator_nRMSE', ev['nRMSE']):.4g} | persistence {ev['persistence_nRMSE']:.4g}"
                f" | cRMSE {ev['cRMSE']:.3g} bRMSE {ev['bRMSE']:.3g} fRMSE_high {ev['fRMSE_high']:.3g}"
            )
    return "\n".join(lines)
