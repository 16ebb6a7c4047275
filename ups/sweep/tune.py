"""The sweep's driver: its name and checks before Ray, then Ray Tune over the trials, under the
sweep's run lock, and the decision on its best trial."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ups import config as C
from ups.champions import REGISTRY
from ups.data import files, views
from ups.names import check_name
from ups.preflight import describe, preflight
from ups.runlock import RunLock
from ups.schema import ConfigError
from ups.stages import registry
from ups.storage import Storage, redact, redact_all
from ups.sweep.decision import decide
from ups.sweep.space import check_space, param_space
from ups.sweep.summary import trial_records, wandb_table
from ups.sweep.trial import trial


def _trial_progress(say: Callable[[str], None], interval_s: float = 10.0) -> Any:
    """A Tune callback that keeps the console informed: a line when a trial starts or ends, and the
    sweep's counts (done / running / stopped by the scheduler / errored) every `interval_s`. It keeps
    when each trial's actor came up (`started`, Unix seconds, the last start where a trial restarted):
    with the first optimizer step its run folder records, that is the trial's start-up."""
    from ray import tune

    class TrialProgress(tune.Callback):
        def __init__(self) -> None:
            self.last = float("-inf")
            self.started: dict[str, float] = {}

        def _counts(self, trials: list[Any]) -> str:
            done = sum(t.status == "TERMINATED" and bool((t.last_result or {}).get("final")) for t in trials)
            stopped = sum(t.status == "TERMINATED" and not (t.last_result or {}).get("final") for t in trials)
            running = sum(t.status == "RUNNING" for t in trials)
            errored = sum(t.status == "ERROR" for t in trials)
            return f"{done} done, {running} running, {stopped} stopped early by the scheduler, {errored} errored"

        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.started[trial.trial_id] = time.time()
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

    from ups import pipeline, ray_session
    from ups.backend.ray_backend import RayBackend

    root = Storage(storage)
    sweep_dir = root.sub(name)
    ray_session.connect(cfg, trials=cfg.sweep.max_concurrent_trials)
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
            trial, base=C.to_wire(cfg), trials_uri=sweep_dir.uri_of("trials"), sweep=name, stage=sc.stage
        ),
        # The trial's own process, plus a bundle for the Ray Data work it runs itself (cache build,
        # re-blocking): Tune captures a trial's child tasks into its placement group.
        tune.PlacementGroupFactory([{"CPU": cfg.sweep.trial_cpus}, {"CPU": cfg.ray.data_cpus}]),
    )
    tune_dir = sweep_dir.uri_of("tune")
    progress = _trial_progress(say)
    t0 = time.perf_counter()
    if tune.Tuner.can_restore(tune_dir):
        say(f"sweep {name}: resuming from {redact(tune_dir)}")
        tuner = tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        from ray.tune.search import BasicVariantGenerator

        tuner = tune.Tuner(
            trainable,
            param_space=param_space(cfg),
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
                callbacks=[progress],
                verbose=0,  # the project's lines instead of Tune's tables
            ),  # fmt: skip
        )
    grid = tuner.fit()
    trials = trial_records(grid, sweep_dir, progress.started)
    say(f"sweep {name}: {len(trials)} trials in {time.perf_counter() - t0:.0f}s")

    tasks = views.load_tasks(cfg.data)
    meta = views.DataMeta.from_tasks(tasks, cfg.data.initial_step)
    decision = decide(cfg, meta, tasks, root, name, trials, say)
    summary = {"sweep": name, "metric": metric, "trials": [t.to_dict() for t in trials], **decision}
    sweep_dir.write_json(redact_all(summary), "sweep_summary.json")  # trial and champion URIs, no credentials
    wandb_table(cfg, name, trials)
    return summary
