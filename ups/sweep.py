"""Ray Tune around the pipeline: a sweep, then gating and promotion of its best trial.

Each trial runs the whole pipeline (a TorchTrainer per stage) with sampled config keys; the
watched stage's per-epoch validation metric reaches Tune, so ASHA can stop a bad trial early.
Trials keep their own run folders under `{storage}/{sweep}/trials/`, so an interrupted sweep is
resumed by running the same command: Tune restores finished trials and each unfinished trial's
pipeline resumes its interrupted stage from its checkpoint.

After the sweep: best trial by val nRMSE -> small evaluation (val subset, short horizon) next to
the champion -> gate -> full evaluation (whole val split, full horizon) -> gate -> promote.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ups import config as C
from ups import gating
from ups.config import Config, ConfigError
from ups.contracts import ChampionRecord, EvalMetrics, TrialRecord
from ups.data import files, views
from ups.data.pdebench import FileInfo
from ups.exports import read_export
from ups.gating import REGISTRY, Registry, family_of
from ups.names import check_name
from ups.preflight import check_config, describe, preflight
from ups.runlock import RunLock
from ups.stages import registry
from ups.storage import Storage, redact, redact_all

# Sections a trial may not change, in whole or in part: they define the family and the protocol
# (data, eval, gate), the sweep itself, or what was checked against the machine (scaling, ray).
FORBIDDEN_SECTIONS = ("data", "eval", "sweep", "gate", "scaling", "ray", "logging")
FORBIDDEN_PREFIXES = tuple(f"{s}." for s in FORBIDDEN_SECTIONS)
MAX_RUNGS = 32  # ASHA's rungs: log(max_t / grace_period) / log(reduction_factor)


def check_space(loaded: C.LoadedConfig, infos: dict[str, FileInfo | None]) -> None:
    """Every key of the search space is a config key a trial may change, and every value a trial can
    draw passes the checks the sweep itself passed: each `choice`/`grid` value, and the bounds and an
    interior (non-integer) point of each numeric domain, one key at a time, through the config
    schema and preflight's config checks against the data (`infos`)."""
    cfg, base = loaded.cfg, C.to_dict(loaded.cfg)
    where = C.source_of("sweep.space", loaded.sources, str(loaded.path))
    if not cfg.sweep.space:
        raise ConfigError(f"{where}: sweep.space: empty (nothing to search)")
    for key, spec in cfg.sweep.space.items():
        if key in FORBIDDEN_SECTIONS or key.startswith(FORBIDDEN_PREFIXES):
            raise ConfigError(
                f"{where}: sweep.space.{key}: trials may not change data, eval, gate, scaling, ray, logging "
                f"or sweep settings (they define the family and the protocol, or were checked against the machine)"
            )
        if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in key.split(".")):
            raise ConfigError(f"{where}: sweep.space: {key!r} is not a dotted config key")
        kind, args = next(iter(spec.items()))
        values = [(v, "") for v in (args if kind in ("choice", "grid") else args[:2])]
        if kind in ("uniform", "loguniform"):  # what a draw looks like: not an integer
            values.append((math.nextafter(float(args[0]), float(args[1])), f" (a draw from {kind} {args})"))
        for value, note in values:
            try:
                check_config(trial_config(base, {key: value}, "check"), infos, lambda _: where)
            except ConfigError as e:
                raise ConfigError(
                    f"{where}: sweep.space.{key}: value {_short(value)}{note}: {str(e).split(': ', 1)[-1]}"
                ) from None
    sc = cfg.sweep.scheduler
    epochs = getattr(cfg.stages, sc.stage).epochs
    src = lambda key: C.source_of(key, loaded.sources, str(loaded.path))
    if epochs == 0:
        raise ConfigError(
            f"{src('sweep.scheduler.stage')}: sweep.scheduler.stage: {sc.stage} has 0 epochs, nothing to watch"
        )
    if sc.name == "asha":
        max_t = epochs + 1  # what `run` gives ASHA: the watched stage's epochs, then the final report
        key = "sweep.scheduler.grace_period"
        if sc.grace_period > max_t:
            raise ConfigError(
                f"{src(key)}: {key}: {sc.grace_period} epochs is more than stages.{sc.stage} runs "
                f"({epochs} epochs); ASHA needs grace_period <= epochs + 1"
            )
        key = "sweep.scheduler.reduction_factor"
        rungs = math.log(max_t / sc.grace_period) / math.log(sc.reduction_factor)
        if rungs > MAX_RUNGS:
            raise ConfigError(
                f"{src(key)}: {key}: {sc.reduction_factor} makes {rungs:.3g} ASHA rungs over {max_t} epochs "
                f"(at most {MAX_RUNGS}); use 2 to 4"
            )


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:55] + "..."


def trial_config(base: dict, params: dict[str, Any], sweep: str) -> Config:
    tree = copy.deepcopy(base)
    for key, value in params.items():
        node = tree
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"sweep.space.{key}: '{'.'.join(parents[: i + 1])}' is not a section")
        node[leaf] = value
    cfg = C.validate(tree)
    return cfg.model_copy(
        update={
            "eval": cfg.eval.model_copy(update={"test": False}),  # trials never look at the test split
            "logging": cfg.logging.model_copy(update={"wandb": cfg.logging.wandb.model_copy(update={"group": sweep})}),
        }
    )


def _param_space(cfg: Config) -> dict:
    from ray import tune

    make = {
        "choice": tune.choice,
        "grid": tune.grid_search,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(a[0], a[1] + 1),
    }
    return {key: make[kind](args) for key, spec in cfg.sweep.space.items() for kind, args in spec.items()}


class _EpochReports:
    """Forward only the watched stage's epoch-end rows (not mid-epoch checkpoints) to Tune."""

    @staticmethod
    def make(metric: str):
        from ray.tune.integration.ray_train import TuneReportCallback

        class EpochReports(TuneReportCallback):
            def after_report(self, run_context, metrics, checkpoint):
                if metrics and metric in metrics[0]:
                    row = metrics[0]
                    self._training_actor_item_queue.put(
                        {"epoch": row["epoch"], metric: row[metric], "stage": row["stage"]}
                    )

        return EpochReports()


def _trial_progress(say: Callable[[str], None], interval_s: float = 10.0) -> Any:
    """A Tune callback that keeps the console informed: a line when a trial starts or ends, and the
    sweep's counts (done / running / stopped by the scheduler / errored) every `interval_s`."""
    from ray import tune

    class TrialProgress(tune.Callback):
        def __init__(self) -> None:
            self.last = float("-inf")

        def _counts(self, trials: list[Any]) -> str:
            done = sum(t.status == "TERMINATED" and bool((t.last_result or {}).get("final")) for t in trials)
            stopped = sum(t.status == "TERMINATED" and not (t.last_result or {}).get("final") for t in trials)
            running = sum(t.status == "RUNNING" for t in trials)
            errored = sum(t.status == "ERROR" for t in trials)
            return f"{done} done, {running} running, {stopped} stopped early by the scheduler, {errored} errored"

        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            say(f"sweep: trial {trial.trial_id} started ({self._counts(trials)})")

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            how = "finished" if (trial.last_result or {}).get("final") else "stopped early by the scheduler"
            say(f"sweep: trial {trial.trial_id} {how} ({self._counts(trials)})")

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            say(f"sweep: trial {trial.trial_id} errored; its log is in its trial folder ({self._counts(trials)})")

        def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
            now = time.monotonic()
            if now - self.last >= interval_s:
                self.last = now
                say(f"sweep: {len(trials)} trial(s): {self._counts(trials)}")

    return TrialProgress()


def _trial(params: dict, *, base: dict, trials_uri: str, sweep: str, stage: str) -> None:
    """One Tune trial: the whole pipeline under its trial id, reporting the watched stage."""
    import ray.tune

    from ups import pipeline

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(base, params, sweep)
    loaded = C.LoadedConfig(cfg, Path(f"{sweep}.yaml"), {})
    metric = registry.get(stage).val_metric
    summary = pipeline.run(
        loaded,
        pipeline.PipelineOptions(
            name=f"trial-{trial_id}",
            storage=trials_uri,
            quiet=True,
            eval_test=False,
            lock=False,  # Tune runs one actor per trial; a lingering dead trial must not block its retry
            stage_callbacks={stage: [_EpochReports.make(metric)]},
        ),
    )
    rec, ev = summary.stages[stage], summary.eval
    assert rec.best is not None and ev is not None, f"trial {trial_id}: no best metric of {stage}, or no evaluation"
    ray.tune.report(
        {
            "epoch": rec.epochs + 1,
            metric: rec.best.value,
            "final": True,
            "eval_nRMSE": ev.nRMSE,
            "eval_persistence_nRMSE": ev.persistence_nRMSE,
        }
    )


def check_sweep_name(name: str, storage: str) -> None:
    """The sweep's folder, `{storage}/{name}`, is a name and not the registry's or a training run's."""
    check_name("--name", name)  # before Ray or any write
    if name == REGISTRY:
        raise ConfigError(f"--name {name}: reserved for the champions' registry ({redact(storage)}/{REGISTRY}/)")
    folder = Storage(storage).sub(name)
    if any(folder.exists(f) for f in ("run.json", "summary.json")):
        raise ConfigError(f"--name {name}: {folder.shown} is a training run's folder; give the sweep another --name")


def validate(loaded: C.LoadedConfig, name: str, storage: str) -> list[str]:
    """Everything a sweep checks before Ray (name, config, data, search space); what it would run."""
    cfg = loaded.cfg
    check_sweep_name(name, storage)
    infos = preflight(loaded, trials=cfg.sweep.max_concurrent_trials)
    check_space(loaded, infos)
    sw = cfg.sweep
    lines = [line for line in describe(loaded, infos, storage=storage, name=name) if not line.startswith("storage")]
    space = "; ".join(f"{k}: {kind} {args}" for k, spec in sw.space.items() for kind, args in spec.items())
    lines += [
        f"sweep    {name}: {sw.num_samples} sample(s) of {space}",
        f"trials   at most {sw.max_concurrent_trials} at once; scheduler {sw.scheduler.name} on "
        f"stages.{sw.scheduler.stage} (grace {sw.scheduler.grace_period} epoch(s))",
        f"storage  {redact(storage)}/{name}; registry {redact(storage)}/registry",
    ]
    return lines


def run(loaded: C.LoadedConfig, name: str, storage: str, quiet: bool = False) -> dict[str, Any]:
    """The sweep, under its name's run lock (one driver per sweep, and never beside a training run
    of that name)."""
    validate(loaded, name, storage)
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, flush=True))
    lock = RunLock(Storage(storage), name)
    lock.acquire(say=say)
    try:
        return _run(loaded, name, storage, say)
    finally:
        lock.release()


def _run(loaded: C.LoadedConfig, name: str, storage: str, say: Callable[[str], None]) -> dict[str, Any]:
    cfg = loaded.cfg
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from ups import pipeline, runtime
    from ups.backend.ray_backend import RayBackend

    root = Storage(storage)
    sweep_dir = root.sub(name)
    runtime.connect(cfg, trials=cfg.sweep.max_concurrent_trials)
    pipeline.ensure_data(cfg, {p: None for p in cfg.data.paths if not files.exists(p)}, RayBackend(say=say), say)

    sc = cfg.sweep.scheduler
    metric = registry.get(sc.stage).val_metric
    # The final report (after evaluation) lands at epochs + 1: ASHA must not stop a trial before it.
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            max_t=getattr(cfg.stages, sc.stage).epochs + 1,
            grace_period=sc.grace_period,
            reduction_factor=sc.reduction_factor,
        )
        if sc.name == "asha"
        else FIFOScheduler()
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial, base=C.to_dict(cfg), trials_uri=sweep_dir.uri_of("trials"), sweep=name, stage=sc.stage
        ),
        # The trial's own process, plus a bundle for the Ray Data work it runs itself (cache build,
        # re-blocking): Tune captures a trial's child tasks into its placement group.
        tune.PlacementGroupFactory([{"CPU": cfg.sweep.trial_cpus}, {"CPU": cfg.ray.data_cpus}]),
    )
    tune_dir = sweep_dir.uri_of("tune")
    t0 = time.perf_counter()
    if tune.Tuner.can_restore(tune_dir):
        say(f"sweep {name}: resuming from {redact(tune_dir)}")
        tuner = tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        from ray.tune.search import BasicVariantGenerator

        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(cfg),
            tune_config=tune.TuneConfig(
                metric=metric,
                mode="min",
                scheduler=scheduler,
                trial_dirname_creator=lambda trial: trial.trial_id,
                num_samples=cfg.sweep.num_samples,
                max_concurrent_trials=cfg.sweep.max_concurrent_trials,
                search_alg=BasicVariantGenerator(
                    random_state=cfg.sweep.seed, max_concurrent=cfg.sweep.max_concurrent_trials
                ),
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=sweep_dir.uri,
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=[_trial_progress(say)],
                verbose=0,  # the project's lines instead of Tune's tables
            ),  # fmt: skip
        )
    grid = tuner.fit()
    trials = _trials(grid, sweep_dir)
    say(f"sweep {name}: {len(trials)} trials in {time.perf_counter() - t0:.0f}s")

    tasks = views.load_tasks(cfg.data)
    meta = views.DataMeta.from_tasks(tasks, cfg.data.initial_step)
    decision = decide(cfg, meta, tasks, root, name, trials, say)
    summary = {"sweep": name, "metric": metric, "trials": [t.to_dict() for t in trials], **decision}
    sweep_dir.write_json(redact_all(summary), "sweep_summary.json")  # trial and champion URIs, no credentials
    _wandb_table(cfg, name, trials)
    return summary


def _trials(grid, sweep_dir: Storage) -> list[TrialRecord]:
    out = []
    for r in grid:
        trial_id = r.path.rstrip("/").rsplit("/", 1)[-1]  # trial dirs are named by trial id
        m = r.metrics or {}
        out.append(
            TrialRecord(
                trial=trial_id,
                config=r.config,
                status="error" if r.error else ("completed" if m.get("final") else "stopped"),
                epochs=m.get("epoch"),
                metrics={k: v for k, v in m.items() if k.startswith(("eval_", "val_"))},
                run=sweep_dir.uri_of("trials", f"trial-{trial_id}"),
                error=repr(r.error)[:500] if r.error else None,
            )
        )
    return sorted(out, key=lambda t: str(t.trial))


def decide(
    cfg: Config,
    meta: views.DataMeta,
    tasks: list[views.Task],
    root: Storage,
    sweep: str,
    trials: list[TrialRecord],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The gating policy (ups/gating.py) on the best trial, its measurements bound to Ray tasks;
    then the champion's test metrics, which are reported and never select anything."""
    from ups import pipeline
    from ups.run import RunDir

    family = family_of(cfg, meta)
    out: dict[str, Any] = {
        "family": family,
        "best": None,
        "gate": {"passed": False, "reasons": []},
        "promoted": False,
        "champion": None,
        "champion_test": None,
    }
    best = gating.best_trial(trials)
    if best is None:
        out["gate"]["reasons"] = ["no trial completed"]
        return out
    out["best"] = best.to_dict()
    run_root, run_name = best.run.rsplit("/", 1)
    cand_run = RunDir(Storage(run_root), run_name)
    cand_summary = cand_run.summary()
    cand_cfg = cand_run.config()
    cand_exports = pipeline.load_exports(cand_run, cand_summary)

    def evaluate(c: Config, exports: dict[str, dict], small: bool) -> EvalMetrics:
        max_samples, horizon = (cfg.gate.small.max_samples, cfg.gate.small.horizon) if small else (None, None)
        r = pipeline.evaluate_exports(c, meta, tasks, exports, "val", max_samples=max_samples, horizon=horizon)
        return r.metrics

    def measure(champ: ChampionRecord | None) -> gating.Measures:
        """Measurements bound to the champion the policy read under the registry's lock."""
        sides = {"candidate": (cand_cfg, cand_exports)}
        metrics = lambda side, small: evaluate(*sides[side], small)
        if champ is None:
            return gating.Measures(metrics)
        sides["champion"] = (_champion_config(champions, champ), _champion_exports(champions, champ))
        return gating.Measures(
            metrics, lambda: _time_inference(cfg, meta, tasks, sides["candidate"], sides["champion"])
        )

    candidate = gating.Candidate(best.trial, best.run, cand_summary, best.metrics)
    champions = Registry(root, family)
    d = gating.decide(cfg.gate, champions, candidate, measure, sweep=sweep, say=say)
    champ = d.champion
    test = None
    if champ:  # the champion's test metrics are reported; they never select anything
        r = pipeline.evaluate_exports(_champion_config(champions, champ), meta, tasks,
                                      _champion_exports(champions, champ), "test")  # fmt: skip
        test = r.metrics.scalars()
    out.update(
        gate={"passed": d.passed, "reasons": d.reasons, "steps": d.steps},
        promoted=d.passed,
        champion={"trial": champ.trial, "sweep": champ.sweep, "checkpoint": champ.checkpoint} if champ else None,
        champion_test=test,
    )
    return out


def _champion_config(champions: Registry, champ: ChampionRecord) -> Config:
    """The champion's config, read from its own folder of the registry."""
    config_uri, _ = champions.champion_files(champ)
    return C.validate(yaml.safe_load(Storage(config_uri).read_text()))


def _champion_exports(champions: Registry, champ: ChampionRecord) -> dict[str, dict]:
    """The champion's weights, from its own folder of the registry, verified against the digests
    its record holds (a record without one, or pointing elsewhere, is refused)."""
    _, found = champions.champion_files(champ)
    return {n: read_export(uri, sha) for n, (uri, sha) in found.items()}


def _time_inference(
    cfg: Config,
    meta: views.DataMeta,
    tasks: list[views.Task],
    candidate: tuple[Config, dict[str, dict]],
    champion: tuple[Config, dict[str, dict]],
) -> dict[str, Any]:
    """Both stacks timed in turns in one Ray task, on the device evaluation runs on (a GPU one when
    the run uses GPUs), on gate.small's trajectories and horizon."""
    import ray

    from ups.backend.ray_backend import task_options

    opts = task_options(cfg)
    (cand_cfg, cand_exports), (champ_cfg, champ_exports) = candidate, champion
    ref = (
        ray.remote(_timing_job)
        .options(**opts)
        .remote(
            C.to_dict(cand_cfg),
            C.to_dict(champ_cfg),
            meta.to_dict(),
            cand_exports,
            champ_exports,
            tasks,
            cfg.gate.small.max_samples,
            cfg.gate.small.horizon,
        )
    )
    return ray.get(ref)


def _timing_job(
    cand_cfg: dict,
    champ_cfg: dict,
    meta_dict: dict,
    cand_exports: dict[str, dict],
    champ_exports: dict[str, dict],
    tasks: list[views.Task],
    samples: int,
    horizon: int,
) -> dict[str, Any]:
    """Runs on a Ray worker: both stacks built in this one process, so they share its state and moment."""
    import torch

    from ups.eval.evaluate import build_surrogate

    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = views.DataMeta.from_dict(meta_dict)
    cand = build_surrogate(C.from_dict(cand_cfg), meta, cand_exports, device)
    champ = build_surrogate(C.from_dict(champ_cfg), meta, champ_exports, device)
    return gating.time_rollouts(cand, champ, tasks, samples, horizon)


def _wandb_table(cfg: Config, sweep: str, trials: list[TrialRecord]) -> None:
    from ups.tracking import WandbRun

    w = cfg.logging.wandb
    if not w.enabled or w.mode == "disabled":
        return
    run = WandbRun(
        {
            "enabled": True,
            "mode": w.mode,
            "project": w.project,
            "entity": w.entity,
            "group": sweep,
            "tags": w.tags,
            "id": f"{sweep}-summary",
            "name": f"{sweep}-summary",
        }
    )
    if run.run is not None:
        import wandb

        cols: list[str | int] = ["trial", "status", "epochs", "eval_nRMSE", "config"]
        table = wandb.Table(
            columns=cols,
            data=[[t.trial, t.status, t.epochs, t.eval_nRMSE, str(t.config)] for t in trials],
        )
        run.run.log({"trials": table})
    run.finish()
