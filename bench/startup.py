"""From the command to the first training step, local (embedded Ray). Goal <= 15 s.

Runs `python -m ray_jobs.train` on the tiny recipe as a fresh process (data generated
beforehand, so only start-up is timed) and reads the wall-clock time of the first optimizer
step that the loop records; the stage's named phases say where the time went.

    .venv/bin/python bench/startup.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from _common import OUT, ROOT, emit, smoke


def main() -> None:
    loaded = smoke()
    data = ROOT / loaded.cfg.data.paths[0]
    if not data.exists():
        from ups.data.generate import generate

        data.parent.mkdir(parents=True, exist_ok=True)
        generate(loaded.cfg.data.generate, str(data))
    name = f"bench-startup-{int(time.time())}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ray_jobs.train",
            "--config",
            "tests/configs/tiny.yaml",
            "--set",
            f"data.path={data}",
            "--set",
            "stages.operator.epochs=1",
            "--name",
            name,
            "--storage",
            str(OUT),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    total = time.time() - t0
    ae = json.loads((OUT / name / "summary.json").read_text())["stages"]["autoencoder"]
    emit(
        "startup",
        {
            "command_to_first_step_s": round(ae["first_step_unix"] - t0, 2),
            "goal_s": 15.0,
            "stage_phases_s": ae["phases_s"],
            "whole_tiny_run_s": round(total, 1),
        },
        setting={"recipe": "tests/configs/tiny.yaml", "workers": 2},
    )


if __name__ == "__main__":
    main()
