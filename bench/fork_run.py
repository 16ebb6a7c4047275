"""Copy a finished run folder and forget some of its stages, so a resume retrains only those.

    python bench/fork_run.py /tmp/exp/c1 /tmp/exp/d1 diffusion_residual
    python -m ray_jobs.train --config configs/burgers1d_cpu20.yaml --name d1 --storage /tmp/exp \\
      --accept-config-change --set stages.diffusion_residual.epochs=12

The ablations in bench/RESULTS.md use it to train a later stage under other settings on the same
autoencoder and operator, or to give the FNO baseline its own budget after a recipe run. It drops
the named stages' exports, records and checkpoints (the latent stages share one checkpoint folder,
`ray/operator/`, so their checkpoints are told apart by the stage in each manifest) and the run's
evaluation; everything else, the latent cache included, is reused as it is.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def fork(src: Path, dst: Path, stages: list[str]) -> None:
    if dst.exists():
        raise SystemExit(f"fork_run: {dst} exists; pick a new name")
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "eval", ignore_errors=True)
    for stage in stages:
        shutil.rmtree(dst / "stages" / stage, ignore_errors=True)
        shutil.rmtree(dst / "ray" / stage, ignore_errors=True)
    for manifest in dst.glob("ray/*/checkpoint_*/manifest.json"):
        if json.loads(manifest.read_text()).get("stage") in stages:
            shutil.rmtree(manifest.parent)
    summary_path = dst / "summary.json"
    summary = json.loads(summary_path.read_text())
    for stage in stages:
        summary["stages"].pop(stage, None)
    summary.pop("eval", None)
    summary.pop("eval_test", None)
    summary_path.write_text(json.dumps(summary))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="the finished run folder, {storage}/{name}")
    ap.add_argument("dst", type=Path, help="the new run folder, in the same storage")
    ap.add_argument("stages", nargs="+", help="stages to forget (they train again on resume)")
    args = ap.parse_args()
    fork(args.src, args.dst, args.stages)
    print(f"fork_run: {args.dst} holds {args.src} without {', '.join(args.stages)} and its evaluation")


if __name__ == "__main__":
    main()
