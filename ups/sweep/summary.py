"""What a sweep reports of its trials: typed records from Tune's results, and a W&B table."""

from __future__ import annotations

from ups.config import Config
from ups.contracts import TrialRecord
from ups.storage import Storage


def trial_records(grid, sweep_dir: Storage, started: dict[str, float] | None = None) -> list[TrialRecord]:
    """The sweep's trials as `sweep_summary.json` lists them; `started`: trial id -> when its actor
    came up (Unix seconds, from the driver's progress callback)."""
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
                started_unix=(started or {}).get(trial_id),
            )
        )
    return sorted(out, key=lambda t: str(t.trial))


def wandb_table(cfg: Config, sweep: str, trials: list[TrialRecord]) -> None:
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
