"""From the command to the first training step, local (embedded Ray). Goal <= 10 s (issue 30).

Runs `python -m ray_jobs.train --config tests/configs/tiny.yaml` (or `--config`: with
configs/quickstart.yaml the whole-run figure is `make run`'s wall) as a fresh process (data
generated beforehand, so only start-up and training are timed) and reads the wall-clock time of
the first optimizer step that the trainer records (summary.json's
stages.autoencoder.first_step_unix) and the stage's named phases (build, ingest, stage_setup,
restore, prepare, epochs, export), which say where the time went. Also reported: the whole run's
wall time, and the same two figures for the same command with `--no-ray` (the same trainer over
a LocalContext in the command's own process; skip with --skip-no-ray).

    .venv/bin/python bench/startup.py [--skip-no-ray] [--config configs/quickstart.yaml] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time

from _common import OUT, ROOT, emit, ensure_data, run_cli

from ups.config import load_config

CONFIG = "tests/configs/tiny.yaml"


def timed_run(config: str, name: str, *flags: str) -> dict:
    t0, wall = run_cli("ray_jobs.train", config, name, *flags)
    stages = json.loads((OUT / name / "summary.json").read_text())["stages"]
    ae = stages["autoencoder"]
    return {
        "command_to_first_step_s": round(ae["first_step_unix"] - t0, 2),
        "whole_run_s": round(wall, 1),
        "autoencoder_phases_s": ae["phases_s"],
        "stage_wall_s": {s: r.get("wall_time_s") for s, r in stages.items() if r.get("status") == "completed"},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-no-ray", action="store_true", help="time only the Ray path")
    ap.add_argument("--config", default=CONFIG, help="the recipe run (default: the tiny test recipe)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for both runs")
    args = ap.parse_args()
    sets = [flag for kv in args.set for flag in ("--set", kv)]
    loaded = load_config(ROOT / args.config, args.set)
    ensure_data(loaded)  # generated now, outside the timed runs
    stamp = int(time.time())
    ray = timed_run(args.config, f"bench-startup-ray-{stamp}", *sets)
    figures = {
        "command_to_first_step_s": ray["command_to_first_step_s"],
        "goal_s": 10.0,
        "stage_phases_s": ray["autoencoder_phases_s"],
        "whole_tiny_run_s": ray["whole_run_s"],
        "stage_wall_s": ray["stage_wall_s"],
    }
    if not args.skip_no_ray:
        local = timed_run(args.config, f"bench-startup-local-{stamp}", "--no-ray", *sets)
        figures["no_ray"] = {
            "command_to_first_step_s": local["command_to_first_step_s"],
            "whole_tiny_run_s": local["whole_run_s"],
            "stage_phases_s": local["autoencoder_phases_s"],
            "stage_wall_s": local["stage_wall_s"],
        }
    emit(
        "startup",
        figures,
        setting={
            "recipe": args.config,
            "overrides": args.set,
            "workers": loaded.cfg.scaling.num_workers,
            "no_ray_workers": 1,
            "ray": "embedded local Ray started by the command",
        },  # fmt: skip
    )


if __name__ == "__main__":
    main()
