"""Typed records for everything that crosses a process boundary or lands in a file.

- `TrainJob`: what the driver hands the trainer for one stage (to Ray workers, or in-process).
- `StageResult`: what the trainer hands back, and what it writes beside the export
  (`stages/<stage>/result.json`), so a stage finished inside a worker group is known to be
  finished even if the driver died before recording it.
- `StageRecord`: one stage's entry in `summary.json`.
- `BestMetric`: the best validation metric of a stage.

Each has `to_dict`/`from_dict` and is read and written through them only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["completed", "interrupted", "skipped"]


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
class TrainJob:
    """One stage's training, as the driver describes it to the trainer."""

    stage: str
    cfg: dict[str, Any]  # the resolved config (ups.config.to_dict)
    config_digest: str
    meta: dict[str, Any]  # DataMeta.to_dict()
    run_uri: str  # the run folder (metrics.jsonl)
    export_uri: str  # where the stage's export.pt goes
    checkpoint_uri: str  # the folder holding this stage's checkpoints
    handoff: dict[str, str] = field(default_factory=dict)  # stage it needs -> its export uri
    handoff_sha256: dict[str, str] = field(default_factory=dict)  # stage -> recorded weights digest
    accept_config_change: bool = False
    stop_flag: str | None = None  # name of the driver's stop-flag actor (Ray only)
    spill: bool = False  # data.mode streams: each worker spills its shard to local disk (ups/train/spill.py)
    # One id per worker group the driver launches: a stage that finished in an earlier attempt of
    # the same group (Ray restarted the workers) is not trained again; after a driver restart it
    # is resumed from its checkpoints as before.
    attempt: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainJob:
        return cls(**_fields(cls, d))


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
            first_step_unix=result.first_step_unix,
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


def stage_records(summary: dict[str, Any]) -> dict[str, StageRecord]:
    """summary.json's `stages`, typed."""
    return {name: StageRecord.from_dict(rec) for name, rec in summary.get("stages", {}).items()}
