"""Where metrics go: the run's `metrics.jsonl` (written by rank 0 of each stage) and the run's
one W&B run (`RunLogger`, owned by the driver).

W&B is offline unless a key is available (or `logging.wandb.mode` / `WANDB_MODE` says otherwise).
One `wandb.init` per driver process: a fresh run is one `offline-run-*-<id>` folder; a resumed
run (the driver restarted) adds a second folder with the same id whose steps continue after the
first's. W&B cannot merge offline folders by id (`wandb sync` of two folders with one id keeps
one of them, wandb/wandb#3841), but it appends folders whose steps do not overlap:
`wandb sync --append <folder>` for the later ones (README).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ups.storage import Storage

if TYPE_CHECKING:
    from ups.config import Config
    from ups.contracts import RunSummary
    from ups.rundir import RunDir

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
KEY_FILE_MAX = 4096  # bytes: a W&B key is under 100 characters


def normalise_env() -> None:
    """WANDB_MODE as W&B itself accepts it, before anything reads it (W&B, and Ray's processes that
    inherit it): `OFFLINE` is offline (W&B refuses upper case), an empty value (`export WANDB_MODE=`)
    is unset (W&B refuses it too)."""
    mode = os.environ.get("WANDB_MODE")
    if mode is None:
        return
    if mode.strip():
        os.environ["WANDB_MODE"] = mode.strip().lower()
    else:
        del os.environ["WANDB_MODE"]


def read_key_file(path: str) -> str:
    """The key in `path`, stripped ('' when empty). OSError when it cannot be read, ValueError when it
    is not a small regular file: a FIFO or a device is never read (one would block, the other never
    end), and the read is bounded."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # non-blocking: opening a FIFO does not wait for a writer
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > KEY_FILE_MAX:
            raise ValueError(f"{st.st_size} bytes, too large for a key file")
        return os.read(fd, KEY_FILE_MAX).decode("utf-8", errors="replace").strip()
    finally:
        os.close(fd)


def api_key() -> str | None:
    """The W&B key from WANDB_API_KEY or the file named by WANDB_API_KEY_FILE (None: neither).

    The file's key is handed to `wandb.init` through its settings, never put into the environment
    (which Ray's processes would inherit) or onto a command line: a job passes workers the file's
    *path*, not the key.
    """
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    path = os.environ.get(KEY_FILE_ENV)
    if path:
        try:
            return read_key_file(path) or None
        except (OSError, ValueError):
            return None
    return None


def key_available() -> bool:
    """A key W&B will find: api_key(), or the ~/.netrc that `wandb login` writes."""
    if api_key():
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def wandb_mode(mode: Literal["auto"] | WandbMode) -> WandbMode:
    """`logging.wandb.mode` as W&B takes it. auto: the user's WANDB_MODE if set (offline and disabled
    are respected), else online iff a key is available, else offline."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        return env  # type: ignore[return-value]
    if env == "dryrun":
        return "offline"
    return "online" if key_available() else "offline"


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
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, api_key=api_key()),
        )

    def summary(self, values: dict[str, Any]) -> None:
        if self.run:
            for k, v in values.items():
                self.run.summary[k] = v

    def finish(self) -> None:
        # `run.finish()` can return before W&B's service has written the offline `.wandb` file out
        # (wandb 0.31: a reader in the same process found the re-run's folder empty, once in a
        # Ray test session); tearing the service down waits for it, so the record is complete on
        # disk when the pipeline returns. The next `wandb.init` of this process starts a new one.
        if self.run:
            self.run.finish()
            self.run = None
            self._wandb.teardown()


STEP_FILE = "wandb_step.json"


class RunLogger:
    """The pipeline run's one W&B run, opened once by the driver and kept for the run's life.

    Every stage's epoch rows (they reach the driver as events, ups/events.py), the evaluation's
    scalars and plots go into it. Steps are the driver's own counter, saved in the run folder, so
    a resumed run (a new driver, a new offline folder with the same run id) continues after the
    last step of the previous one: offline folders never overlap and `wandb sync --append` can
    put them together as one run.
    """

    def __init__(self, settings: dict[str, Any] | None, run: Storage, config: dict[str, Any] | None = None) -> None:
        self.folder = run
        self.wandb = WandbRun(settings, config=config)
        self.step, self.logged = 0, {}
        if self.wandb.run is not None and run.exists(STEP_FILE):
            try:  # a damaged counter costs continuity of steps, not the run
                state = run.read_json(STEP_FILE)
                self.step, self.logged = int(state["next"]), {str(k): int(v) for k, v in state["epochs"].items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                print(f"warning: {STEP_FILE} is damaged; W&B steps restart at 0 in this segment", flush=True)
        self._stages: set[str] = set()

    @property
    def on(self) -> bool:
        return self.wandb.run is not None

    def log_row(self, stage: str, row: dict[str, Any]) -> None:
        run = self.wandb.run
        if run is None:
            return
        if stage not in self._stages:  # each stage's curves against its own epochs
            run.define_metric(f"train/{stage}/epoch")
            run.define_metric(f"train/{stage}/*", step_metric=f"train/{stage}/epoch")
            self._stages.add(stage)
        epoch = int(row.get("epoch", 0))
        if epoch <= self.logged.get(stage, 0):
            return  # an epoch redone after a restart (its checkpoint was not written): logged already
        values = {f"train/{stage}/{k}": v for k, v in row.items() if isinstance(v, (int, float))}
        step = self.step
        self.step += 1
        self.logged[stage] = epoch
        self._save()  # before the log: a driver killed in between skips a step rather than reusing it
        run.log(values, step=step)

    def _save(self) -> None:
        self.folder.write_json({"next": self.step, "epochs": self.logged}, STEP_FILE)

    def log_eval(self, summary: RunSummary, images: dict[str, bytes]) -> None:
        """The evaluation's scalars (val under eval/, test under test/) and its plots."""
        run = self.wandb.run
        if run is None:
            return
        flat: dict[str, Any] = {}
        for prefix, ev in (("eval", summary.eval), ("test", summary.eval_test)):
            if ev is not None:
                flat.update({f"{prefix}/{k}": v for k, v in ev.to_dict().items() if isinstance(v, (int, float))})
        self.wandb.summary(flat)
        if images:
            import io

            from PIL import Image

            wandb = self.wandb._wandb
            step = self.step
            self.step += 1
            self._save()
            run.log({k: wandb.Image(Image.open(io.BytesIO(v))) for k, v in images.items()}, step=step)

    def finish(self) -> None:
        self.wandb.finish()


def wandb_settings(cfg: Config, info: dict[str, Any], rundir: RunDir) -> dict[str, Any] | None:
    """What the driver needs to open the run's W&B run (None: W&B is off)."""
    w = cfg.logging.wandb
    if not w.enabled or w.mode == "disabled":
        return None
    return {
        "enabled": True, "mode": w.mode, "project": w.project, "entity": w.entity, "group": w.group,
        "tags": w.tags, "id": info["wandb_id"], "name": info["name"],
        "dir": rundir.dir.path() if rundir.dir.local else None,
    }  # fmt: skip
