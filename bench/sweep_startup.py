"""A sweep trial's start-up: from the moment Tune's driver sees a trial's actor come up to that
trial's first optimizer step, per trial, beside the single run's command -> first step (issue 30).

Runs `python -m ray_jobs.tune --config tests/configs/sweep_tiny.yaml` (two trials, one at a time,
embedded Ray) as a fresh process, data generated beforehand, and reads sweep_summary.json (each
trial's `started_unix`, kept by the driver's progress callback) and each trial's run folder
(summary.json's stages.<first stage>.first_step_unix and that stage's phases). Also reported: the
command -> first trial's first step, and the sweep's whole wall time.

    .venv/bin/python bench/sweep_startup.py [--config tests/configs/sweep_tiny.yaml] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import OUT, ROOT, emit, ensure_data, run_cli

from ups.config import load_config

CONFIG = "tests/configs/sweep_tiny.yaml"


def first_stage(run: Path) -> tuple[str, dict] | None:
    """The run's earliest-started stage record (the first to take an optimizer step), if it got one."""
    summary = run / "summary.json"
    if not summary.exists():
        return None
    stages = json.loads(summary.read_text())["stages"]
    started = [(r["first_step_unix"], name, r) for name, r in stages.items() if r.get("first_step_unix")]
    if not started:
        return None
    _, name, record = min(started)
    return name, record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=CONFIG, help="the sweep recipe (default: the two-trial test sweep)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    args = ap.parse_args()
    loaded = load_config(ROOT / args.config, args.set)
    ensure_data(loaded)  # generated now, outside the timed run
    name = f"bench-sweep-startup-{int(time.time())}"
    sets = [flag for kv in args.set for flag in ("--set", kv)]
    t0, wall = run_cli("ray_jobs.tune", args.config, name, *sets)
    records = json.loads((OUT / name / "sweep_summary.json").read_text())["trials"]
    trials, firsts = [], []
    for t in sorted(records, key=lambda t: t["started_unix"] or float("inf")):
        first = first_stage(Path(t["run"]))
        if first is not None:
            firsts.append(first[1]["first_step_unix"])
        row = {"trial": t["trial"], "status": t["status"], "started_after_command_s": None, "startup_s": None}
        if t["started_unix"] is not None:
            row["started_after_command_s"] = round(t["started_unix"] - t0, 2)
        if first is not None and t["started_unix"] is not None:
            stage, record = first
            row.update(startup_s=round(record["first_step_unix"] - t["started_unix"], 2), first_stage=stage,
                       first_stage_phases_s=record.get("phases_s"))  # fmt: skip
        trials.append(row)
    emit(
        "sweep_startup",
        {
            "trial_startup_s": [row["startup_s"] for row in trials],
            "command_to_first_trial_step_s": round(min(firsts) - t0, 2) if firsts else None,
            "sweep_wall_s": round(wall, 1),
            "trials": trials,
        },
        setting={"recipe": args.config, "overrides": args.set, "ray": "embedded local Ray started by the command"},
    )


if __name__ == "__main__":
    main()
