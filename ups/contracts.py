"""Typed records for everything that crosses a process boundary or lands in a file.

- `TrainJob`: what the driver hands the trainer for one stage (to Ray workers, or in-process).
- `StageResult`: what the trainer hands back, and what it writes beside the export
  (`stages/<stage>/result.json`), so a stage finished inside a worker group is known to be
  finished even if the driver died before recording it.
- `StageRecord`: one stage's entry in `summary.json`.
- `BestMetric`: the best validation metric of a stage.
- `EvalMetrics`: one decoded evaluation (`eval/<split>/metrics.json`, summary.json's `eval`,
  `eval_test`); `EvalResult` is what an evaluation returns: those metrics and, apart, the arrays
  its plots are drawn from (they never land in a record).
- `RunSummary`: a run's `summary.json`, read and written by `RunSummary.read` / `write` only.
- `TrialRecord`: one Tune trial of a sweep (`sweep_summary.json`'s `trials`).
- `Decision` / `ChampionRecord`: a gating decision (the registry's history) and the registry's
  `champion.json` (the promoting decision plus where the champion's weights are).

Each record that lands in a file has `to_dict`/`from_dict` and is read and written through them
only (`EvalResult` only crosses a process boundary, pickled by Ray). The on-disk field names
are those earlier versions wrote, so every older file still reads; keys a record does not declare
(written by a newer version) are dropped on reading.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from ups.errors import ConfigError
from ups.schema import CorrectorKind
from ups.storage import Storage, redact

if TYPE_CHECKING:
    import numpy as np

Status = Literal["completed", "interrupted", "skipped"]
TrialStatus = Literal["completed", "stopped", "error"]
CORRECTORS = ("none", *get_args(CorrectorKind))  # what an evaluation's `corrector` may be
SUMMARY_FILE, CHAMPION_FILE = "summary.json", "champion.json"


def _fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The keys of `d` that `cls` declares (records written by older versions may carry more)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class BestMetric:
    metric: str
    value: float
    epoch: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> BestMetric | None:
        return cls(**_fields(cls, d)) if d else None


@dataclass
class LatentBuild:
    """The latent cache, as a worker group that also trains the autoencoder must build it: a group
    of one process trains every stage in turn, so the cache is encoded inside it, between the
    autoencoder and the first latent stage, with the digest of the export this group just wrote
    (ups/latent_cache.py: `build_or_reuse`; the driver checks and records the cache afterwards)."""

    run_uri: str  # the run folder, which holds latent_cache/
    encoder_export_uri: str
    data_sha256: str

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> LatentBuild | None:
        return cls(**_fields(cls, d)) if d else None


@dataclass
class TrainJob:
    """One stage's training, as the driver describes it to the trainer."""

    stage: str
    cfg: dict[str, Any]  # the config, only the keys set (ups.config.to_wire)
    config_digest: str
    meta: dict[str, Any]  # DataMeta.to_dict()
    run_uri: str  # the run folder (metrics.jsonl)
    export_uri: str  # where the stage's export.pt goes
    checkpoint_uri: str  # the folder holding this stage's checkpoints
    handoff: dict[str, str] = field(default_factory=dict)  # stage it needs -> its export uri
    handoff_sha256: dict[str, str] = field(default_factory=dict)  # stage -> recorded weights digest
    accept_config_change: bool = False
    mailbox: str | None = None  # name of the driver's actor: the stop flag and the event mailbox (Ray only)
    spill: bool = False  # data.mode streams: each worker spills its shard to local disk (ups/train/spill.py)
    # One id per worker group the driver launches: a stage that finished in an earlier attempt of
    # the same group (Ray restarted the workers) is not trained again; after a driver restart it
    # is resumed from its checkpoints as before.
    attempt: str = ""
    # A time budget the driver sets, in place of the stage's own `time_budget_s` (a baseline given
    # the surrogate's training time: stages.fno_baseline.equal_time).
    time_budget_s: float | None = None
    # Stages trained earlier in this same worker group whose epochs' time (StageResult.train_s) the
    # worker adds to `time_budget_s` before this stage starts: the driver cannot know it in advance.
    equal_time_with: list[str] = field(default_factory=list)
    # Prefix of this stage's splits in the group's data ("" -> "train"/"val"): a group of one
    # process trains a later fields stage beside latent ones, its splits keyed "fields/train"...
    data_prefix: str = ""
    # Set on the first latent stage of a group that trains the autoencoder too: build the cache first.
    latent_build: LatentBuild | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainJob:
        if "stop_flag" in d and "mailbox" not in d:  # the field's name before it said what the actor does
            d = {**d, "mailbox": d["stop_flag"]}
        return cls(**{**_fields(cls, d), "latent_build": LatentBuild.from_dict(d.get("latent_build"))})


@dataclass
class StageResult:
    """What one stage's training ended with."""

    stage: str
    status: Status  # completed, or interrupted (a stop was requested; checkpointed where it was)
    epochs: int
    best: BestMetric
    stopped_early: bool = False
    world_size: int = 1
    restarts: int = 0
    world_sizes: list[int] = field(default_factory=list)
    weights_sha256: str | None = None  # of the exported tensors (completed stages)
    first_step_unix: float | None = None
    phases_s: dict[str, float] = field(default_factory=dict)
    attempt: str = ""  # the TrainJob.attempt that produced it
    # The settings the worker trained with, after every default and protocol was applied (batch,
    # steps per epoch, optimizer, schedule, EMA, clip): what ran, not what the config file said.
    trained_with: dict[str, Any] = field(default_factory=dict)
    # Wall time of the stage's epochs (training and validation), summed over every attempt that
    # trained them: what a time budget counts, without worker start-up or hand-offs.
    train_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["best"] = self.best.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageResult:
        kw = _fields(cls, d)
        kw["best"] = BestMetric.from_dict(d["best"])
        return cls(**kw)


@dataclass
class StageRecord:
    """A stage's entry in summary.json."""

    status: Status
    epochs: int = 0
    best: BestMetric | None = None
    stopped_early: bool | None = None
    world_size: int | None = None
    restarts: int | None = None
    world_sizes: list[int] | None = None
    checkpoint: str | None = None  # the newest Ray/local checkpoint folder of the stage
    export: str | None = None  # uri of export.pt
    weights_sha256: str | None = None
    wall_time_s: float | None = None
    phases_s: dict[str, float] | None = None
    first_step_unix: float | None = None
    trained_with: dict[str, Any] | None = None  # StageResult.trained_with
    train_s: float | None = None  # StageResult.train_s

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @classmethod
    def skipped(cls) -> StageRecord:
        return cls(status="skipped", epochs=0)

    @classmethod
    def of(cls, result: StageResult, *, export: str, checkpoint: str | None, wall_time_s: float) -> StageRecord:
        return cls(
            status=result.status,
            epochs=result.epochs,
            best=result.best,
            stopped_early=result.stopped_early,
            world_size=result.world_size,
            restarts=result.restarts,
            world_sizes=result.world_sizes,
            checkpoint=checkpoint,
            export=export,
            weights_sha256=result.weights_sha256,
            wall_time_s=round(wall_time_s, 2),
            phases_s=result.phases_s,
            train_s=round(result.train_s, 2),
            first_step_unix=result.first_step_unix,
            trained_with=result.trained_with or None,
        )

    def to_dict(self) -> dict[str, Any]:
        if self.status == "skipped":
            return {"status": "skipped", "epochs": 0}
        d = dataclasses.asdict(self)
        d["best"] = self.best.to_dict() if self.best else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageRecord:
        kw = _fields(cls, d)
        kw["best"] = BestMetric.from_dict(d.get("best"))
        return cls(**kw)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class EvalMetrics:
    """One decoded evaluation of a run on one split (ups/eval/evaluate.py).

    `scores` holds PDEBench's metrics (ups/eval/metrics.py `KEYS`) of the model under their own
    names ("nRMSE") and those of everything scored beside it under its prefix ("operator_",
    "persistence_", "fno_", "recon_", "one_step_", a rival corrector's "diffusion_"...): the flat
    keys the JSON has always had, so `score` answers any key a gate names."""

    split: str
    samples: int  # trajectories evaluated
    horizon: int  # frames predicted after the initial ones
    initial_step: int
    corrector: str  # what the model used: "none" (the operator alone) or a CorrectorKind
    scores: dict[str, float] = field(default_factory=dict)
    horizon_nRMSE: dict[str, list[float]] = field(default_factory=dict)  # predictor -> nRMSE per frame
    per_task: dict[str, dict[str, float]] | None = None  # task -> {"nRMSE", "<prefix>nRMSE"} (several tasks)
    wall_time_s: float | None = None
    wall_clock: float | None = None  # seconds per trajectory, every predictor together
    protocol: dict[str, Any] | None = None  # what two evaluations must share to be compared (gating)
    corrector_selection: dict[str, float] | None = None  # val nRMSE per corrector kept or not (auto)

    @property
    def nRMSE(self) -> float:
        """The model's nRMSE (every evaluation has it)."""
        return self.scores["nRMSE"]

    @property
    def persistence_nRMSE(self) -> float:
        """The nRMSE of repeating the last given frame (every evaluation has it)."""
        return self.scores["persistence_nRMSE"]

    def score(self, key: str) -> float | None:
        """A metric by its flat key ("nRMSE", "operator_nRMSE", "wall_clock"); None when not measured."""
        return self.wall_clock if key == "wall_clock" else self.scores.get(key)

    def scalars(self) -> dict[str, Any]:
        """What a record of it keeps (a gate's steps, the champion's test metrics): its numbers and
        strings, and the protocol; not the curves."""
        return {k: v for k, v in self.to_dict().items() if isinstance(v, (int, float, str)) or k == "protocol"}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"split": self.split, "samples": self.samples, "horizon": self.horizon,
                             "initial_step": self.initial_step, "corrector": self.corrector, **self.scores}  # fmt: skip
        rest = {
            "per_task": self.per_task,
            "horizon_nRMSE": self.horizon_nRMSE,
            "wall_time_s": self.wall_time_s,
            "wall_clock": self.wall_clock,
            "protocol": self.protocol,
            "corrector_selection": self.corrector_selection,
        }
        d.update({k: v for k, v in rest.items() if v is not None})  # older records lack some: absent, not null
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalMetrics:
        """ValueError (or KeyError, TypeError) on a damaged record; its readers name the file."""
        if not isinstance(d, dict):
            raise ValueError(f"not a mapping but {type(d).__name__}")
        if d.get("corrector") not in CORRECTORS:
            raise ValueError(f"corrector {d.get('corrector')!r} is not one of {', '.join(CORRECTORS)}")
        for key, kind in (("split", str), ("samples", int), ("horizon", int), ("initial_step", int)):
            if not isinstance(d.get(key), kind):
                raise ValueError(f"{key!r} missing or not {kind.__name__}")
        scores = {k: float(v) for k, v in d.items() if k not in _EVAL_FIELDS and _is_number(v)}
        return cls(**{k: v for k, v in _fields(cls, d).items() if k != "scores"}, scores=scores)


_EVAL_FIELDS = {f.name for f in dataclasses.fields(EvalMetrics)}


@dataclass
class EvalResult:
    """What an evaluation returns: its metrics, and apart from them the arrays its plots are drawn
    from (truth, pred, persistence: (B, T, X[, Y], C) each), which no record carries."""

    metrics: EvalMetrics
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class LatentCacheRecord:
    """summary.json's `latent_cache`: the Parquet cache of encoded trajectories the latent stages read."""

    uri: str
    reused: bool
    rows: dict[str, int]  # split -> rows
    encoder_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatentCacheRecord:
        return cls(**_fields(cls, d))


@dataclass
class RunSummary:
    """A run's `summary.json`: each stage's record, the data it read, and its evaluations.

    The pipeline writes it after every worker group and after evaluation; `read` is how anything
    else (evaluation, gating, a deployed surrogate) learns what a run holds: `stages` (each one's
    status, export and weights digest), `eval` (val, which selected the corrector: `corrector`) and
    `eval_test` (the report split)."""

    name: str = ""
    stages: dict[str, StageRecord] = field(default_factory=dict)
    config_digest: str | None = None  # the run's (run.json), which its checkpoints and exports carry
    data_sha256: str | None = None
    data_mode: str | None = None  # "memory" or "stream"
    meta_sha256: str | None = None  # of meta.json: the data's metadata a deployed surrogate needs
    command: str | None = None  # the command line that trained the run (URIs redacted), for its model card
    latent_cache: LatentCacheRecord | None = None
    eval: EvalMetrics | None = None  # val
    eval_test: EvalMetrics | None = None

    @property
    def corrector(self) -> str | None:
        """The corrector the surrogate runs with, as the val evaluation chose it ("none": the operator
        alone); None before the run was evaluated."""
        return self.eval.corrector if self.eval else None

    def weights_sha256(self) -> dict[str, str | None]:
        """Each completed stage's weights digest: what identifies a trained stack (gating)."""
        return {n: r.weights_sha256 for n, r in self.stages.items() if r.completed}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "stages": {n: r.to_dict() for n, r in self.stages.items()}}
        rest = {
            "config_digest": self.config_digest,
            "data_sha256": self.data_sha256,
            "data_mode": self.data_mode,
            "meta_sha256": self.meta_sha256,
            "command": self.command,
            "latent_cache": self.latent_cache.to_dict() if self.latent_cache else None,
            "eval": self.eval.to_dict() if self.eval else None,
            "eval_test": self.eval_test.to_dict() if self.eval_test else None,
        }
        d.update({k: v for k, v in rest.items() if v is not None})
        return d

    @classmethod
    def from_dict(cls, d: Any) -> RunSummary:
        """ValueError naming the damaged entry when `d` is not a summary (`read` makes it one line)."""
        if not isinstance(d, dict) or "stages" not in d:
            raise ValueError("no 'stages' entry")
        if not isinstance(d["stages"], dict):
            raise ValueError("'stages' is not a mapping")
        kw = _fields(cls, d)
        kw["stages"] = {}
        for name, rec in d["stages"].items():
            try:
                kw["stages"][name] = StageRecord.from_dict(rec)
            except (TypeError, KeyError, ValueError, AttributeError) as e:
                raise ValueError(f"stage record {name!r} ({e})") from None
        for key, parse in (("latent_cache", LatentCacheRecord.from_dict), ("eval", EvalMetrics.from_dict),
                           ("eval_test", EvalMetrics.from_dict)):  # fmt: skip
            try:
                kw[key] = parse(d[key]) if d.get(key) else None
            except (TypeError, KeyError, ValueError, AttributeError) as e:
                raise ValueError(f"{key} record ({e})") from None
        return cls(**kw)

    @classmethod
    def read(cls, run: Storage) -> RunSummary:
        """The summary.json of the run folder `run`; ConfigError, one line naming the file and what
        is wrong, when it is missing or was damaged (edited, truncated, replaced)."""
        where = redact(run.uri_of(SUMMARY_FILE))
        try:
            raw = run.read_bytes(SUMMARY_FILE)
        except FileNotFoundError:
            raise ConfigError(f"{where}: missing (not a run folder, or one that has not started)") from None
        except OSError as e:  # a folder or a dangling name where the file should be
            raise ConfigError(f"{where}: cannot be read ({type(e).__name__})") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except RecursionError:
            raise ConfigError(f"{where}: corrupt, nested too deeply to be a summary") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{where}: corrupt, not JSON ({str(e).splitlines()[0]})") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ConfigError(f"{where}: corrupt, {e}") from None

    def write(self, run: Storage) -> None:
        run.write_json(self.to_dict(), SUMMARY_FILE)


@dataclass
class TrialRecord:
    """One Tune trial of a sweep, as `sweep_summary.json` lists it."""

    trial: str  # Tune's trial id
    config: dict[str, Any]  # the sampled keys
    status: TrialStatus  # completed, stopped (by the scheduler) or error
    epochs: int | None  # the last reported epoch
    metrics: dict[str, float]  # what it reported last: val_* of the watched stage, eval_nRMSE, ...
    run: str  # URI of the trial's run folder
    error: str | None = None
    # When the driver saw the trial's actor come up (Unix seconds; None for a trial this driver did
    # not start): with the run's first_step_unix, the trial's start-up (bench/sweep_startup.py).
    started_unix: float | None = None

    @property
    def eval_nRMSE(self) -> float | None:
        """The val nRMSE of the trial's evaluation (only a trial that finished has one)."""
        return self.metrics.get("eval_nRMSE")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialRecord:
        return cls(**_fields(cls, d))


@dataclass(kw_only=True)
class Decision:
    """One gating decision: an entry of a registry's history (ups/gating.py `decide`)."""

    at: str  # UTC, ISO 8601
    sweep: str
    trial: str
    run: str  # URI of the candidate's run folder
    config_digest: str | None = None
    data_sha256: str | None = None
    weights_sha256: dict[str, str | None] = field(default_factory=dict)  # completed stage -> digest
    promoted: bool = False
    reasons: list[str] = field(default_factory=list)  # one per gate and phase
    metrics: dict[str, Any] = field(default_factory=dict)  # the full evaluation's scalars, else the trial's
    champion_before: dict[str, str] | None = None  # {"trial", "sweep"} of the champion it was measured against

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        return cls(**_fields(cls, d))


@dataclass(kw_only=True)
class ChampionRecord(Decision):
    """A registry's `champion.json`: the decision that promoted it, and the copies of its weights,
    config and summary in the registry's own `champion-*` folder (`checkpoint`)."""

    checkpoint: str | None  # None: an edited record whose checkpoint is no string names no folder
    exports: dict[str, str]  # stage -> URI of its export.pt in that folder

    @classmethod
    def of(cls, entry: Decision, *, checkpoint: str, exports: dict[str, str]) -> ChampionRecord:
        return cls(**{f.name: getattr(entry, f.name) for f in dataclasses.fields(Decision)},
                   checkpoint=checkpoint, exports=exports)  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChampionRecord:
        kw = _fields(cls, d)
        if not isinstance(kw.get("checkpoint"), str):
            kw["checkpoint"] = None
        return cls(**kw)

    @classmethod
    def read(cls, registry: Storage) -> ChampionRecord | None:
        """The champion of the registry folder `registry` (None while it has none); ConfigError, one
        line, when champion.json was damaged."""
        if not registry.exists(CHAMPION_FILE):
            return None
        where = redact(registry.uri_of(CHAMPION_FILE))
        try:
            return cls.from_dict(json.loads(registry.read_bytes(CHAMPION_FILE).decode("utf-8")))
        except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise ConfigError(f"{where}: corrupt champion record ({str(e).splitlines()[0]})") from None

    def write(self, registry: Storage) -> None:
        """One whole-file write: the switch from one champion to the next."""
        registry.write_json(self.to_dict(), CHAMPION_FILE)
