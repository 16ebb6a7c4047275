"""Where metrics go: the run's `metrics.jsonl` and one W&B run per pipeline run, both from rank 0.

W&B is offline unless WANDB_API_KEY is in the environment (or `logging.wandb.mode` says
otherwise). Every stage and every restart re-opens the same W&B run by id with
`resume="allow"`, so a pipeline run is one W&B run, resumed rather than duplicated. Offline, each
re-open is its own `offline-run-*-<id>` folder that `wandb sync` merges into that one run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ups.storage import Storage

if TYPE_CHECKING:
    from ups.config import Config
    from ups.run import RunDir

METRICS_FILE = "metrics.jsonl"


def read_jsonl(storage: Storage, name: str) -> list[dict[str, Any]]:
    if not storage.exists(name):
        return []
    return [json.loads(line) for line in storage.read_text(name).splitlines() if line.strip()]


class MetricsLog:
    """`metrics.jsonl`: rows of other stages plus this stage's history, rewritten whole each epoch.

    Whole-file writes work on object stores, and a resumed stage replaces the rows it is about to
    redo instead of appending duplicates.
    """

    def __init__(self, run: Storage, stage: str) -> None:
        self.run, self.stage = run, stage
        self.prior = [r for r in read_jsonl(run, METRICS_FILE) if r.get("stage") != stage]

    def write(self, history: list[dict[str, Any]]) -> None:
        self.run.write_text("".join(json.dumps(r) + "\n" for r in self.prior + history), METRICS_FILE)


WandbMode = Literal["online", "offline", "disabled"]


KEY_FILE_ENV = "WANDB_API_KEY_FILE"  # a path to a file holding the key: a mounted secret on every node


def load_api_key() -> bool:
    """Make the W&B key available to this process only; True when there is one.

    The key comes from WANDB_API_KEY, from the file named by WANDB_API_KEY_FILE (read here and put
    into this process's environment, never onto a command line or into a config), or from the
    ~/.netrc that `wandb login` writes. A job passes the file's *path* to its workers, not the key.
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = os.environ.get(KEY_FILE_ENV)
    if path:
        try:
            key = Path(path).read_text().strip()
        except OSError:
            key = ""
        if key:
            os.environ["WANDB_API_KEY"] = key
            return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def wandb_mode(mode: Literal["auto"] | WandbMode) -> WandbMode:
    """`logging.wandb.mode` as W&B takes it. auto: the user's WANDB_MODE if set (offline and disabled
    are respected), else online iff a key is available (load_api_key), else offline."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        return env  # type: ignore[return-value]
    if env == "dryrun":
        return "offline"
    return "online" if load_api_key() else "offline"


class WandbRun:
    """A thin guard around one W&B run; a no-op when disabled."""

    def __init__(self, settings: dict[str, Any] | None, *, config: dict[str, Any] | None = None) -> None:
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


def wandb_settings(cfg: Config, info: dict[str, Any], rundir: RunDir) -> dict[str, Any] | None:
    """What a process needs to open the run's W&B run (None: W&B is off)."""
    w = cfg.logging.wandb
    if not w.enabled or w.mode == "disabled":
        return None
    return {
        "enabled": True, "mode": w.mode, "project": w.project, "entity": w.entity, "group": w.group,
        "tags": w.tags, "id": info["wandb_id"], "name": info["name"],
        "dir": rundir.dir.path() if rundir.dir.local else None,
    }  # fmt: skip


def final_wandb(settings: dict[str, Any] | None, summary: dict[str, Any]) -> None:
    """The evaluation's scalars into the W&B run's summary."""
    run = WandbRun(settings)
    flat = {f"eval/{k}": v for k, v in summary.get("eval", {}).items() if isinstance(v, (int, float))}
    flat.update({f"test/{k}": v for k, v in summary.get("eval_test", {}).items() if isinstance(v, (int, float))})
    run.summary(flat)
    run.finish()
