"""Where metrics go: the run's `metrics.jsonl` and one W&B run per pipeline run, both from rank 0.

W&B is offline unless WANDB_API_KEY is in the environment (or `logging.wandb.mode` says
otherwise). Every stage and every restart re-opens the same W&B run by id with
`resume="allow"`, so a pipeline run is one W&B run, resumed rather than duplicated. Offline, each
re-open is its own `offline-run-*-<id>` folder that `wandb sync` merges into that one run.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ups.storage import Storage

METRICS_FILE = "metrics.jsonl"


def read_jsonl(storage: Storage, name: str) -> list[dict]:
    if not storage.exists(name):
        return []
    return [json.loads(line) for line in storage.read_text(name).splitlines() if line.strip()]


class MetricsLog:
    """`metrics.jsonl`: rows of other stages plus this stage's history, rewritten whole each epoch.

    Whole-file writes work on object stores, and a resumed stage replaces the rows it is about to
    redo instead of appending duplicates.
    """

    def __init__(self, run: Storage, stage: str):
        self.run, self.stage = run, stage
        self.prior = [r for r in read_jsonl(run, METRICS_FILE) if r.get("stage") != stage]

    def write(self, history: list[dict]) -> None:
        self.run.write_text("".join(json.dumps(r) + "\n" for r in self.prior + history), METRICS_FILE)


def wandb_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


class WandbRun:
    """A thin guard around one W&B run; a no-op when disabled."""

    def __init__(self, settings: dict[str, Any] | None, *, config: dict | None = None):
        self.run = None
        if not settings or not settings.get("enabled") or wandb_mode(settings["mode"]) == "disabled":
            return
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            id=settings["id"],
            resume="allow",
            name=settings["name"],
            project=settings["project"],
            entity=settings.get("entity"),
            group=settings.get("group"),
            tags=settings.get("tags") or None,
            mode=wandb_mode(settings["mode"]),
            dir=settings.get("dir"),
            config=config,
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def define_stage(self, stage: str) -> None:
        if self.run:
            self.run.define_metric(f"train/{stage}/epoch")
            self.run.define_metric(f"train/{stage}/*", step_metric=f"train/{stage}/epoch")

    def log(self, prefix: str, row: dict[str, Any]) -> None:
        if self.run:
            self.run.log({f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, (int, float))})

    def summary(self, values: dict[str, Any]) -> None:
        if self.run:
            for k, v in values.items():
                self.run.summary[k] = v

    def finish(self) -> None:
        if self.run:
            self.run.finish()
            self.run = None
