"""The UPS pipeline: the registered stages in order, then decoded evaluation.

    preflight (no Ray) -> run folder -> backend (Ray, or this process) -> data (generated if
    missing) -> [autoencoder] -> latent cache -> [operator, diffusion_residual,
    consistency_distill, steady_prior] -> [fno_baseline] -> evaluate (val; test for the report)
    -> summary.json

Consecutive stages that read the same data run in one worker group ([...] above): one
TorchTrainer start instead of one per stage. A group of one process that holds its data in
memory (`Backend.mixes_inputs`) trains every stage: one start for the whole pipeline, the latent
cache encoded inside the group after the autoencoder. Each stage still has its own checkpoints,
its own metrics rows and summary record, and resumes mid-stage. A finished stage is recorded in
summary.json with its export and weights digest as soon as it finishes (StageDone); re-running
the same command skips it and resumes the interrupted one from its newest valid checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ups import config as C
from ups.backend import Backend, Preempted
from ups.config import Config
from ups.console import Console
from ups.contracts import (
    EvalMetrics,
    EvalResult,
    LatentBuild,
    LatentCacheRecord,
    RunSummary,
    StageRecord,
    StageResult,
    TrainJob,
)
from ups.data import views
from ups.data.pdebench import FileInfo
from ups.eval.selection import choose_corrector
from ups.events import Emit, Event, StageDone
from ups.exports import EXPORT_FILE, ExportMismatch, Exports, read_export
from ups.latent_cache import build_or_reuse, cache_build_id, streamed
from ups.preflight import preflight
from ups.report import summary_table
from ups.rundir import SUMMARY_FILE, RunDir
from ups.runlock import RunLock
from ups.stages import registry
from ups.storage import Storage, redact
from ups.tracking import RunLogger, wandb_settings
from ups.train.context import TASKS

__all__ = ["PipelineOptions", "Preempted", "check_data_digest", "evaluate_exports", "load_exports", "preflight", "run"]


@dataclass
class PipelineOptions:
    name: str
    storage: str
    restart: bool = False
    accept_config_change: bool = False
    eval_test: bool | None = None  # None: follow eval.test
    quiet: bool = False
    stage_callbacks: dict[str, list[Any]] = field(default_factory=dict)  # stage -> Ray Train callbacks (Tune)
    backend: Backend | None = None  # default: Ray (an embedded local Ray unless RAY_ADDRESS is set)
    lock: bool = True  # hold the run's lock (ups/runlock.py): one driver per run name


def run(loaded: C.LoadedConfig, opts: PipelineOptions) -> RunSummary:
    """Train every active stage (resuming what a previous driver left), evaluate, summarise."""
    infos = preflight(loaded, ray=opts.backend is None or opts.backend.name == "ray")
    storage = Storage(opts.storage)
    rundir = RunDir(storage, opts.name)
    action = rundir.check(loaded.cfg, restart=opts.restart, accept_change=opts.accept_config_change)
    data = None
    if all(i is not None for i in infos.values()):
        # The data is there: loaded, and checked against the digest the run recorded at its start,
        # before the run's lock is taken and before any Ray resource is used.
        recorded = None if action == "restart" else rundir.summary()
        data = load_data(loaded.cfg, rundir, recorded, Console(quiet=opts.quiet))
    lock = RunLock(storage, opts.name) if opts.lock else None
    if lock:
        lock.acquire(say=(lambda _: None) if opts.quiet else print)
    try:
        return _run(loaded, opts, infos, rundir, data)
    finally:
        if lock:
            lock.release()


Data = tuple[list[views.Task], views.DataMeta, str]  # the tasks, their metadata, their digest


def load_data(cfg: Config, rundir: RunDir, summary: RunSummary | None, console: Console) -> Data:
    """The run's data and its digest; a resumed run must find the data it started on."""
    with console.phase("loading data"):
        tasks = views.load_tasks(cfg.data)
        data_sha = views.data_digest(tasks)
    check_data_digest(rundir, summary, cfg.data.paths, data_sha, "resume")
    return tasks, views.DataMeta.from_tasks(tasks, cfg.data.initial_step), data_sha


def _run(
    loaded: C.LoadedConfig, opts: PipelineOptions, infos: dict[str, FileInfo | None], rundir: RunDir,
    data: Data | None,
) -> RunSummary:  # fmt: skip
    cfg = loaded.cfg
    info = rundir.open(cfg, restart=opts.restart, accept_change=opts.accept_config_change)
    summary = rundir.summary()  # read (and refused if damaged) before any Ray resource is used
    wandb = RunLogger(wandb_settings(cfg, info, rundir), rundir.dir, config=C.to_dict(cfg))
    console = Console(quiet=opts.quiet, wandb=wandb)
    try:
        return _stages_and_eval(cfg, opts, infos, rundir, info, summary, console, data)
    finally:
        console.close()
        wandb.finish()


def _stages_and_eval(
    cfg: Config, opts: PipelineOptions, infos: dict[str, FileInfo | None], rundir: RunDir, info: dict[str, Any],
    summary: RunSummary, console: Console, data: Data | None,
) -> RunSummary:  # fmt: skip
    say = console.say
    say(f"run {opts.name} -> {rundir.dir.shown}")
    backend = opts.backend or _ray_backend(say)
    backend.emit = _recorder(console.handle, rundir, summary)
    backend.start(cfg, rundir)
    if data is None:  # data.generate writes the missing files (on Ray, unless --no-ray)
        ensure_data(cfg, infos, backend, say)
        data = load_data(cfg, rundir, summary, console)
    tasks, meta, data_sha = data
    mode = "stream" if streamed(tasks) else "memory"
    if mode == "stream":
        spill = cfg.data.spill_dir or "the system temp folder"
        say(f"   data streamed from the files, {cfg.data.chunk_trajectories} trajectories per read; "
            f"worker shards spill to {spill}")  # fmt: skip
    meta_json = json.dumps(meta.to_dict()).encode()  # what a Surrogate needs of the data (ups/artifact.py)
    rundir.dir.write_bytes(meta_json, "meta.json")
    summary.name, summary.config_digest, summary.data_sha256, summary.data_mode = (
        opts.name, info["config_digest"], data_sha, mode)  # fmt: skip
    summary.meta_sha256, summary.command = hashlib.sha256(meta_json).hexdigest(), _command()
    records = summary.stages
    rundir.write_summary(summary)  # the data digest, recorded at the start: resumes and evaluations check it

    latents: Any = None
    for folder, *group in _groups(cfg, rundir, records, say, mixed=backend.mixes_inputs(streamed(tasks))):
        backend.check_stop(group[0])
        kinds = list(dict.fromkeys(registry.get(n).inputs for n in group))  # the first pending stage's first
        prefix: dict[str, str] = {k: "" if i == 0 else f"{k}/" for i, k in enumerate(kinds)}  # TrainJob.data_prefix
        group_data: dict[str, Any] = {}
        build: LatentBuild | None = None
        if "fields" in kinds:
            group_data.update(_prefixed(backend.field_data(tasks), prefix["fields"]))
        if "latents" in kinds and "autoencoder" in group:  # the group encodes the cache after the autoencoder
            build = LatentBuild(rundir.dir.uri, rundir.dir.uri_of("stages", "autoencoder", EXPORT_FILE), data_sha)
            group_data[TASKS] = tasks
            built_before = cache_build_id(rundir.dir)
        elif "latents" in kinds:
            if latents is None:
                latents = _driver_latents(rundir, tasks, meta, cfg, data_sha, summary, backend, console)
            group_data.update(_prefixed(latents, prefix["latents"]))
        attempt = uuid.uuid4().hex
        first_latent = next((n for n in group if registry.get(n).inputs == "latents"), None)
        jobs = [_job(name, folder, attempt, cfg, info, meta, rundir, records, opts, backend, streamed(tasks), group,
                     prefix, build if name == first_latent else None) for name in group]  # fmt: skip
        where = f"{cfg.scaling.num_workers} worker(s)" if backend.name == "ray" else "this process (no Ray)"
        for name, job in zip(group, jobs, strict=True):
            epochs = C.stage_config(cfg, name).epochs
            if job.time_budget_s is None and not job.equal_time_with:
                say(f"== {name}: {epochs} epochs on {where}")
            elif job.equal_time_with:  # the worker adds the time of the stages before it in this group
                say(f"== {name}: up to {epochs} epochs within the surrogate's training time (equal_time), "
                    f"on {where}")  # fmt: skip
            else:
                say(f"== {name}: up to {epochs} epochs within {job.time_budget_s:.1f}s, the surrogate's training "
                    f"time (equal_time), on {where}")  # fmt: skip
        callbacks = [cb for name in group for cb in opts.stage_callbacks.get(name, [])]
        t0 = time.perf_counter()
        with console.watch(f"{'+'.join(group)} working"):
            results, checkpoint = backend.train(folder, jobs, group_data, cfg, callbacks)
        _record(results, time.perf_counter() - t0, rundir, checkpoint, records)
        if build is not None and first_latent in {r.stage for r in results}:  # the group built or reused it
            latents = _driver_latents(rundir, tasks, meta, cfg, data_sha, summary, backend, console, True, built_before)
        rundir.write_summary(summary)
        stopped = [r.stage for r in results if r.status == "interrupted"]
        if stopped:
            raise Preempted(f"stage {stopped[0]} stopped on request and checkpointed; run the same command to resume")
        if len(results) < len(group):
            raise RuntimeError(f"stages {group[len(results) :]} did not run")

    backend.check_stop("evaluation")
    exports = load_exports(rundir, summary)
    val = evaluate_run(backend, rundir, cfg, meta, tasks, exports, "val", console)
    if cfg.eval.corrector == "auto" and val.corrector != "none":
        choice = choose_corrector(val)
        scores = ", ".join(f"{k} {v:.4g}" for k, v in sorted(choice.scores.items(), key=lambda kv: kv[1]))
        say(f"== eval: val nRMSE by corrector: {scores}; keeping {choice.kind}"
            + (" (the operator alone)" if choice.kind == "none" else ""))  # fmt: skip
        if choice.changed:
            cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"corrector": choice.kind})})
            val = evaluate_run(backend, rundir, cfg, meta, tasks, exports, "val", console)
        val.corrector_selection = choice.scores
    summary.eval = val
    if cfg.eval.test if opts.eval_test is None else opts.eval_test:
        summary.eval_test = evaluate_run(backend, rundir, cfg, meta, tasks, exports, "test", console)
    rundir.write_summary(summary)
    assert console.wandb is not None
    console.wandb.log_eval(summary, _plots(rundir, cfg))
    if not opts.quiet:
        print(summary_table(summary))
    return summary


def _command() -> str:
    """The command line that trained the run, for its model card (URIs redacted)."""
    return " ".join(["python -m " + _module(), *(shlex.quote(redact(a)) for a in sys.argv[1:])])


def _module() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None and spec.name else os.path.basename(sys.argv[0] or "python")


def _plots(rundir: RunDir, cfg: Config) -> dict[str, bytes]:
    """The evaluation's plots for W&B (val; test too when it was evaluated)."""
    out = {}
    for split in ("val", "test"):
        for name in ("fields", "horizon"):
            if cfg.eval.plots and rundir.dir.exists("eval", split, f"{name}.png"):
                out[f"eval/{split}/{name}"] = rundir.dir.read_bytes("eval", split, f"{name}.png")
    return out


def _ray_backend(say: Callable[[str], None]) -> Backend:
    from ups.backend.ray_backend import RayBackend

    return RayBackend(say=say)


def ensure_data(cfg: Config, infos: dict[str, FileInfo | None], backend: Backend, say: Callable[[str], None]) -> None:
    """Generate the data files that preflight found missing (data.generate says how)."""
    for path, info in infos.items():
        if info is None:
            assert cfg.data.generate is not None
            say(f"data: {path} is missing; generating it from data.generate")
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            backend.generate(cfg.data.generate, path)


def _recorder(handle: Emit, rundir: RunDir, summary: RunSummary) -> Emit:
    """The console's handler, and for StageDone a record in summary.json at once: a stage that
    finished inside a group is known to be done if the driver dies before the group ends (the
    group's end records it again, with the group's checkpoint and wall time)."""

    def on_event(event: Event) -> None:
        if not isinstance(event, StageDone):
            handle(event)
            return
        r = StageResult.from_dict(event.result)
        export = rundir.dir.uri_of("stages", r.stage, EXPORT_FILE)
        summary.stages[r.stage] = StageRecord.of(r, export=export, checkpoint=None,
                                                 wall_time_s=sum(r.phases_s.values()))  # fmt: skip
        rundir.write_summary(summary)

    return on_event


def _driver_latents(
    rundir: RunDir, tasks: list[views.Task], meta: views.DataMeta, cfg: Config, data_sha: str, summary: RunSummary,
    backend: Backend, console: Console, in_group: bool = False, built_before: str | None = None,
) -> Any:  # fmt: skip
    """The latent cache for the latent stages' groups, built here (or reused, its files verified)
    and recorded in the summary. `in_group`: a group encoded it itself; it is only checked and
    recorded here, reused if its build id is the one found before that group (`built_before`)."""
    ae = summary.stages["autoencoder"]
    assert ae.weights_sha256
    ae_export = rundir.dir.uri_of("stages", "autoencoder", EXPORT_FILE)  # the run's own, not a record's
    with console.phase("latent cache"):
        cache, reused = build_or_reuse(rundir.dir, tasks, meta, cfg, ae_export, ae.weights_sha256, data_sha,
                                       use_ray=backend.remote_encode and not in_group, say=console.say)  # fmt: skip
    if in_group:
        reused = reused and cache.manifest.get("build_id") == built_before
    summary.latent_cache = LatentCacheRecord(cache.uri, reused, cache.manifest["rows"], ae.weights_sha256)
    console.say(f"   latent cache {'reused' if reused else 'built'} at {redact(cache.uri)}")
    return backend.latent_data(cache, stream=streamed(tasks))


def _prefixed(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A group's splits of one input kind, keyed as its stages' `TrainJob.data_prefix` asks."""
    return {prefix + split: rows for split, rows in data.items()}


def _groups(
    cfg: Config, rundir: RunDir, records: dict[str, StageRecord], say: Callable[[str], None], mixed: bool = False
) -> list[list[str]]:
    """The stages still to train, grouped: consecutive active stages with the same inputs form one
    group, named by its first active stage whether or not that one is still pending, so a resumed
    run finds the group's checkpoints in the same `ray/<group>/` folder. Where the backend `mixed`
    inputs (a group of one process), every active stage is in one group: one worker-group start
    for the whole pipeline, the latent cache encoded inside it after the autoencoder."""
    static: list[list[str]] = []
    for name, stage in registry.stages().items():
        if C.stage_config(cfg, name).epochs == 0:
            records[name] = StageRecord.skipped()
            say(f"== {name}: skipped (0 epochs)")
            continue
        if static and (mixed or registry.get(static[-1][-1]).inputs == stage.inputs):
            static[-1].append(name)
        else:
            static.append([name])
    groups = []
    for members in static:
        pending = []
        for name in members:
            rec = records.get(name)
            if rec is not None and rec.completed and rundir.dir.exists("stages", name, EXPORT_FILE):
                best = f" (best {rec.best.metric}={rec.best.value:.4g})" if rec.best else ""
                say(f"== {name}: completed earlier{best}, skipped")
            else:
                pending.append(name)
        if pending:
            groups.append([members[0], *pending])
    return groups


def _job(
    name: str, group: str, attempt: str, cfg: Config, info: dict[str, Any], meta: views.DataMeta, rundir: RunDir,
    records: dict[str, StageRecord], opts: PipelineOptions, backend: Backend, spill: bool = False,
    members: list[str] | None = None, prefix: dict[str, str] | None = None, latent_build: LatentBuild | None = None,
) -> TrainJob:  # fmt: skip
    """The job of stage `name` in a group whose pending stages are `members` (in order), whose
    data keys each input kind's splits by `prefix`."""
    members = members or [name]
    needs = registry.get(name).needs
    inputs = registry.get(name).inputs
    budget, with_group = _equal_time_budget(cfg, name, records, members[: members.index(name)])
    return TrainJob(
        stage=name, cfg=C.to_wire(cfg), config_digest=info["config_digest"], meta=meta.to_dict(),
        run_uri=rundir.dir.uri, export_uri=rundir.dir.uri_of("stages", name, EXPORT_FILE),
        checkpoint_uri=rundir.dir.uri_of("ray", group),
        handoff={n: rundir.dir.uri_of("stages", n, EXPORT_FILE) for n in needs},
        handoff_sha256={n: r.weights_sha256 for n in needs if (r := records.get(n)) and r.weights_sha256},
        accept_config_change=opts.accept_config_change, mailbox=backend.mailbox_name(), attempt=attempt,
        spill=spill, time_budget_s=budget, equal_time_with=with_group, data_prefix=(prefix or {}).get(inputs, ""),
        latent_build=latent_build,
    )  # fmt: skip


def _equal_time_budget(
    cfg: Config, name: str, records: dict[str, StageRecord], before: Sequence[str] = ()
) -> tuple[float | None, list[str]]:
    """For a baseline with `equal_time`: the epochs' wall of every surrogate stage this run trained.

    The surrogate's stages are those that build none of the baseline's networks; a stage trained
    in an earlier run and reused counts with the time it took then (summary.json's `train_s`). Those
    pending `before` it in its own group are returned by name: the worker adds their time when they
    are done (TrainJob.equal_time_with). Without any: (the budget, [])."""
    if not getattr(C.stage_config(cfg, name), "equal_time", False):
        return None, []
    mine = set(registry.get(name).builds)
    surrogate = lambda other: other != name and not mine & set(registry.get(other).builds)  # noqa: E731
    in_group = [other for other in before if surrogate(other)]
    spent = [rec.train_s or 0.0 for other, rec in records.items()
             if surrogate(other) and rec.completed and other not in in_group]  # fmt: skip
    if not spent and not in_group:
        raise ValueError(f"stages.{name}.equal_time: no surrogate stage trained in this run to take the time of")
    return (sum(spent), in_group) if in_group else (round(sum(spent), 2), [])


def _record(
    results: list[StageResult], wall: float, rundir: RunDir, checkpoint: str | None, records: dict[str, StageRecord]
) -> None:
    """Per-stage summary records; the group's start-up time is charged to its first stage."""
    work = [sum(r.phases_s.values()) for r in results]
    overhead = max(wall - sum(work), 0.0)
    for i, r in enumerate(results):
        records[r.stage] = StageRecord.of(
            r, export=rundir.dir.uri_of("stages", r.stage, EXPORT_FILE), checkpoint=checkpoint,
            wall_time_s=work[i] + (overhead if i == 0 else 0.0),
        )  # fmt: skip


def load_exports(rundir: RunDir, summary: RunSummary) -> Exports:
    """Every completed stage's export tensors, verified against the digests in summary.json.

    An export is read from the run folder's own `stages/<stage>/export.pt`, wherever summary.json
    says it was written: a moved or copied run folder evaluates, and a record cannot send the
    reader outside the run. A record without an export or a digest, a record naming another file,
    a linked, missing, unreadable or altered export is a ConfigError naming it: nothing unverified
    is used."""
    where = redact(rundir.dir.uri_of(SUMMARY_FILE))
    exports: Exports = {}
    for n, rec in summary.stages.items():
        if not rec.completed:
            continue
        uri = rundir.dir.uri_of("stages", n, EXPORT_FILE)
        shown = redact(uri)
        if not rec.export:
            raise C.ConfigError(f"{where}: stage {n} is recorded as completed but records no export")
        if not rec.export.partition("?")[0].endswith(f"/stages/{n}/{EXPORT_FILE}"):
            raise C.ConfigError(
                f"{where}: stage {n}'s export is recorded as {redact(rec.export)}, not the run's "
                f"stages/{n}/{EXPORT_FILE}; refusing an export from outside the run"
            )
        if not rec.weights_sha256:
            raise C.ConfigError(f"{shown}: stage {n} has no recorded weights digest; refusing to use it unverified")
        if rundir.dir.kind("stages", n, EXPORT_FILE) == "link":
            raise C.ConfigError(f"{shown}: stage {n}'s export is a symbolic link; refusing a file from outside the run")
        try:
            exports[n] = read_export(uri, rec.weights_sha256)
        except FileNotFoundError:
            raise C.ConfigError(f"{shown}: stage {n}'s export is missing") from None
        except ExportMismatch as e:
            raise C.ConfigError(f"{e} (stage {n}'s export was altered)") from None
        except Exception as e:  # torch.load(weights_only=True) refuses anything but tensors and plain data
            raise C.ConfigError(f"{shown}: stage {n}'s export cannot be read ({type(e).__name__})") from None
    return exports


def check_data_digest(rundir: RunDir, summary: RunSummary | None, paths: list[str], found: str, action: str) -> None:
    """The data a run `resume`s or `evaluate`s on must be the data it started on: the digest
    recorded in summary.json at the run's start (`views.data_digest`) against the one just computed.
    A resume before any digest was recorded has nothing to compare; an evaluation must have one."""
    recorded = summary.data_sha256 if summary is not None else None
    shown = ", ".join(redact(p) for p in paths)
    where = redact(rundir.dir.uri_of(SUMMARY_FILE))
    if recorded is None and action == "evaluate":
        raise C.ConfigError(f"data.path {shown}: {where} records no data digest (data_sha256), so the data cannot "
                            f"be checked against what the run was trained on")  # fmt: skip
    if recorded is not None and recorded != found:
        hint = "restore the data, or pass --restart to train on the new data" if action == "resume" else \
            "evaluate on the data the run was trained on"  # fmt: skip
        raise C.ConfigError(
            f"data.path {shown}: the data changed since the run started (digest {str(recorded)[:12]} recorded "
            f"in {where}, {found[:12]} found); {hint}"
        )


def evaluate_exports(
    cfg: Config, meta: views.DataMeta, tasks: list[views.Task], exports: Exports, split: str, *,
    max_samples: int | None = None, horizon: int | None = None, backend: Backend | None = None,
) -> EvalResult:  # fmt: skip
    """Decoded evaluation of stage exports (on Ray unless a backend is given)."""
    backend = backend or _ray_backend(lambda _: None)
    return backend.evaluate(cfg, meta, tasks, exports, split, max_samples=max_samples, horizon=horizon)


def evaluate_run(
    backend: Backend, rundir: RunDir, cfg: Config, meta: views.DataMeta, tasks: list[views.Task],
    exports: Exports, split: str, console: Console,
) -> EvalMetrics:  # fmt: skip
    """The run's evaluation on a split: metrics, plots and eval/{split}/ files."""
    from ups.eval import plots

    with console.phase(f"evaluating {split}"):
        result = backend.evaluate(cfg, meta, tasks, exports, split)
    m, arrays = result.metrics, result.arrays
    rundir.dir.write_json(m.to_dict(), "eval", split, "metrics.json")
    if cfg.eval.plots:
        rundir.dir.write_bytes(plots.fields_png(arrays["truth"], arrays["pred"], meta.initial_step),
                               "eval", split, "fields.png")  # fmt: skip
        rundir.dir.write_bytes(plots.horizon_png(m.horizon_nRMSE, meta.initial_step),
                               "eval", split, "horizon.png")  # fmt: skip
    console.say(
        f"== eval ({split}): nRMSE={m.nRMSE:.4g}  persistence={m.persistence_nRMSE:.4g}"
        f"  ({m.samples} trajectories, {m.horizon} steps, corrector={m.corrector})"
    )
    return m
